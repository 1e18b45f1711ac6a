/* SPDX-License-Identifier: GPL-2.0 */
/*
 * C glue of the rtbackup module: only what Rust cannot reach in Linux 6.12,
 * that is macros, inline functions and static C structures. No logic lives
 * here; the only caller is the Rust `sys` layer (rust/sys/glue.rs).
 */
#ifndef RTBACKUP_GLUE_H
#define RTBACKUP_GLUE_H

#include <linux/types.h>

/* RTB_HAVE_*: what the kernel offers, probed by Kbuild (rust/compat/). */
#include "compat.h"

struct bio;
struct file;
struct gendisk;
struct inode;
struct poll_table_struct;
struct queue_limits;
struct vm_area_struct;
struct wait_queue_head;

#ifndef RTB_HAVE_MISCDEVICE
/* Implemented in Rust (rust/sys/control.rs). */
long rtb_control_ioctl(struct file *file, unsigned int cmd, unsigned long arg);
int rtb_control_register(const char *name);
void rtb_control_deregister(void);
#endif

/* Implemented in Rust (rust/sys/ringfile.rs). */
int rtb_ring_mmap(struct file *file, struct vm_area_struct *vma);
unsigned int rtb_ring_poll(struct file *file, struct poll_table_struct *pt);
long rtb_ring_ioctl(struct file *file, unsigned int cmd, unsigned long arg);
int rtb_ring_release(struct inode *inode, struct file *file);

unsigned int rtb_blk_open_read_write(void);
unsigned int rtb_blk_open_restrict_writes(void);
unsigned int rtb_blk_feat_io_stat(void);
unsigned int rtb_blk_feat_stable_writes(void);
unsigned int rtb_blk_feat_write_cache(void);
unsigned int rtb_blk_feat_fua(void);
unsigned int rtb_blk_feat_zoned(void);
struct gendisk *rtb_alloc_disk(struct queue_limits *lim);
void rtb_atomic_inc(atomic_t *v);
int rtb_atomic_read(atomic_t *v);
void rtb_atomic_dec_and_wake_up(atomic_t *v);
void rtb_wait_atomic_zero(atomic_t *v);

void rtb_atomic_inc_and_wake_up(atomic_t *v);
long rtb_wait_atomic_changed(atomic_t *v, int old, long timeout);
long rtb_wait_atomic_changed_killable(atomic_t *v, int old, long timeout);
size_t rtb_bio_copy_data(struct bio *bio, void *dst, size_t cap);
u32 rtb_crc32c(u32 crc, const void *p, size_t len);
u64 rtb_ktime_real_ns(void);
void *rtb_vmalloc_user(unsigned long size);
void rtb_vfree(void *p);
int rtb_vma_map_readonly(struct vm_area_struct *vma, void *mem);
void rtb_waitqueue_init(struct wait_queue_head *wq);
void rtb_wake_up_poll(struct wait_queue_head *wq, bool hup);
void rtb_poll_wait(struct file *file, struct wait_queue_head *wq, struct poll_table_struct *pt);
unsigned int rtb_epollin(void);
unsigned int rtb_epollhup(void);
int rtb_ring_getfd(void *priv);

#endif /* RTBACKUP_GLUE_H */
