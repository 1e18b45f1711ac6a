// SPDX-License-Identifier: GPL-2.0
/*
 * C glue of the rtbackup module; see glue.h. Each function wraps one macro,
 * inline function or static structure that bindgen cannot export.
 */
#include <linux/blkdev.h>
#include <linux/fs.h>
#include <linux/miscdevice.h>
#include <linux/module.h>
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

/* struct miscdevice and misc_register() are not in 6.12's bindings. */
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
