// SPDX-License-Identifier: GPL-2.0
/*
 * C glue of the rtbackup module; see glue.h. Each function wraps one macro,
 * inline function or static structure that bindgen cannot export.
 */
#include <linux/anon_inodes.h>
#include <linux/blkdev.h>
#include <linux/crc32c.h>
#include <linux/fs.h>
#include <linux/miscdevice.h>
#include <linux/mm.h>
#include <linux/module.h>
#include <linux/poll.h>
#include <linux/timekeeping.h>
#include <linux/vmalloc.h>
#include <linux/wait_bit.h>

#include "glue.h"

/* BLK_OPEN_* are __force casts, which bindgen drops. */
unsigned int rtb_blk_open_read_write(void)
{
	return (__force unsigned int)(BLK_OPEN_READ | BLK_OPEN_WRITE);
}

unsigned int rtb_blk_open_restrict_writes(void)
{
	return (__force unsigned int)BLK_OPEN_RESTRICT_WRITES;
}

/* BLK_FEAT_* are __force casts, which bindgen drops. */
unsigned int rtb_blk_feat_io_stat(void)
{
	return (__force unsigned int)BLK_FEAT_IO_STAT;
}

unsigned int rtb_blk_feat_stable_writes(void)
{
	return (__force unsigned int)BLK_FEAT_STABLE_WRITES;
}

unsigned int rtb_blk_feat_write_cache(void)
{
	return (__force unsigned int)BLK_FEAT_WRITE_CACHE;
}

unsigned int rtb_blk_feat_fua(void)
{
	return (__force unsigned int)BLK_FEAT_FUA;
}

unsigned int rtb_blk_feat_zoned(void)
{
	return (__force unsigned int)BLK_FEAT_ZONED;
}

/* blk_alloc_disk() is a macro that defines a static lock_class_key. */
struct gendisk *rtb_alloc_disk(struct queue_limits *lim)
{
	return blk_alloc_disk(lim, NUMA_NO_NODE);
}

/* atomic_t operations are inline; wait_var_event() is a macro. */
void rtb_atomic_inc(atomic_t *v)
{
	atomic_inc(v);
}

int rtb_atomic_read(atomic_t *v)
{
	return atomic_read(v);
}

void rtb_atomic_dec_and_wake_up(atomic_t *v)
{
	atomic_dec_and_wake_up(v);
}

void rtb_wait_atomic_zero(atomic_t *v)
{
	wait_var_event(v, atomic_read_acquire(v) == 0);
}

#ifndef RTB_HAVE_MISCDEVICE
/*
 * The control device, where the kernel has no Rust misc-device abstraction
 * (rust/sys/control.rs): struct miscdevice and misc_register() are not in
 * 6.12's bindings.
 */
static const struct file_operations rtb_control_fops = {
	.owner = THIS_MODULE,
	.open = nonseekable_open,
	.unlocked_ioctl = rtb_control_ioctl,
	.compat_ioctl = compat_ptr_ioctl,
	.llseek = noop_llseek,
};

static struct miscdevice rtb_control_misc = {
	.minor = MISC_DYNAMIC_MINOR,
	.fops = &rtb_control_fops,
	.mode = 0600,
};

int rtb_control_register(const char *name)
{
	rtb_control_misc.name = name;
	return misc_register(&rtb_control_misc);
}

void rtb_control_deregister(void)
{
	misc_deregister(&rtb_control_misc);
}
#endif

/* Generation counters: wait_var_event_timeout() is a macro. */
void rtb_atomic_inc_and_wake_up(atomic_t *v)
{
	atomic_inc(v);
	smp_mb__after_atomic();
	wake_up_var(v);
}

long rtb_wait_atomic_changed(atomic_t *v, int old, long timeout)
{
	return wait_var_event_timeout(v, atomic_read_acquire(v) != old, timeout);
}

/*
 * wait_var_event_timeout() in TASK_KILLABLE: there is no such macro, so this
 * is what it expands to with the state changed (the same in 6.12 and 7.x).
 * Returns -ERESTARTSYS when killed, 0 when the time ran out, more when the
 * value changed.
 */
long rtb_wait_atomic_changed_killable(atomic_t *v, int old, long timeout)
{
	might_sleep();
	if (atomic_read_acquire(v) != old)
		return timeout ? timeout : 1;
	return ___wait_var_event(v, ___wait_cond_timeout(atomic_read_acquire(v) != old),
				 TASK_KILLABLE, 0, timeout, __ret = schedule_timeout(__ret));
}

/* bio_for_each_segment() and memcpy_from_bvec() are macros and inlines. */
size_t rtb_bio_copy_data(struct bio *bio, void *dst, size_t cap)
{
	struct bio_vec bv;
	struct bvec_iter iter;
	size_t done = 0;

	bio_for_each_segment(bv, bio, iter) {
		if (bv.bv_len > cap - done)
			return 0;
		memcpy_from_bvec(dst + done, &bv);
		done += bv.bv_len;
	}
	return done;
}

/* crc32c() is not in the Rust bindings (linux/crc32c.h). */
u32 rtb_crc32c(u32 crc, const void *p, size_t len)
{
	return crc32c(crc, p, len);
}

/* ktime_get_real_ns() is inline. */
u64 rtb_ktime_real_ns(void)
{
	return ktime_get_real_ns();
}

/* vmalloc.h is not in the Rust bindings. */
void *rtb_vmalloc_user(unsigned long size)
{
	return vmalloc_user(size);
}

void rtb_vfree(void *p)
{
	vfree(p);
}

/* vm_flags_*() are inline; remap_vmalloc_range() is not in the bindings. */
int rtb_vma_map_readonly(struct vm_area_struct *vma, void *mem)
{
	vm_flags_mod(vma, VM_DONTEXPAND | VM_DONTDUMP, VM_MAYWRITE | VM_MAYEXEC);
	return remap_vmalloc_range(vma, mem, 0);
}

/* Wait queues for poll(): init_waitqueue_head() is a macro, the rest inline. */
void rtb_waitqueue_init(struct wait_queue_head *wq)
{
	init_waitqueue_head(wq);
}

void rtb_wake_up_poll(struct wait_queue_head *wq, bool hup)
{
	if (wq_has_sleeper(wq))
		wake_up_interruptible_poll(wq, EPOLLIN | EPOLLRDNORM | (hup ? EPOLLHUP : 0));
}

void rtb_poll_wait(struct file *file, struct wait_queue_head *wq, struct poll_table_struct *pt)
{
	poll_wait(file, wq, pt);
}

unsigned int rtb_epollin(void)
{
	return (__force unsigned int)(EPOLLIN | EPOLLRDNORM);
}

unsigned int rtb_epollhup(void)
{
	return (__force unsigned int)EPOLLHUP;
}

/* A ring file: anon_inodes.h is not in the bindings; static fops. */
static const struct file_operations rtb_ring_fops = {
	.owner = THIS_MODULE,
	.mmap = rtb_ring_mmap,
	.poll = rtb_ring_poll,
	.unlocked_ioctl = rtb_ring_ioctl,
	.compat_ioctl = compat_ptr_ioctl,
	.release = rtb_ring_release,
	.llseek = noop_llseek,
};

int rtb_ring_getfd(void *priv)
{
	return anon_inode_getfd("[rtbackup-ring]", &rtb_ring_fops, priv, O_RDWR | O_CLOEXEC);
}
