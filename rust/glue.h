/* SPDX-License-Identifier: GPL-2.0 */
/*
 * C glue of the rtbackup module: only what Rust cannot reach in Linux 6.12,
 * that is macros, inline functions and static C structures. No logic lives
 * here; the only caller is the Rust `sys` layer (rust/sys/glue.rs).
 */
#ifndef RTBACKUP_GLUE_H
#define RTBACKUP_GLUE_H

#include <linux/types.h>

struct file;
struct gendisk;
struct queue_limits;

/* Implemented in Rust (rust/sys/control.rs). */
long rtb_control_ioctl(struct file *file, unsigned int cmd, unsigned long arg);

unsigned int rtb_blk_open_read_write(void);
unsigned int rtb_blk_open_restrict_writes(void);
unsigned int rtb_blk_feat_io_stat(void);
unsigned int rtb_blk_feat_stable_writes(void);
unsigned int rtb_blk_feat_zoned(void);
struct gendisk *rtb_alloc_disk(struct queue_limits *lim);
void rtb_atomic_inc(atomic_t *v);
int rtb_atomic_read(atomic_t *v);
void rtb_atomic_dec_and_wake_up(atomic_t *v);
void rtb_wait_atomic_zero(atomic_t *v);
int rtb_control_register(const char *name);
void rtb_control_deregister(void);

#endif /* RTBACKUP_GLUE_H */
