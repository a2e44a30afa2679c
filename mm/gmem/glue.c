// SPDX-License-Identifier: GPL-2.0
/*
 * GMEM: the C entry points of the core.
 *
 * Everything GMEM does lives in Rust (gmem.rs and its modules).  This file
 * holds only what C must provide: the system call entry, the initcall, the
 * static key that gates the core-MM hooks, the sysfs directories of device
 * nodes, the exports of the driver API (symbols of Rust crates other than
 * the kernel crate are not exported to modules otherwise) and the
 * tracepoints' instances (trace.rs calls them).
 */
#include <linux/gmem.h>
#include <linux/init.h>
#include <linux/jump_label.h>
#include <linux/kobject.h>
#include <linux/mm.h>
#include <linux/slab.h>
#include <linux/syscalls.h>
#include <linux/sysfs.h>

#define CREATE_TRACE_POINTS
#define CREATE_RUST_TRACE_POINTS
#include <trace/events/gmem.h>

EXPORT_SYMBOL_GPL(gm_dev_create);
EXPORT_SYMBOL_GPL(gm_dev_destroy);
EXPORT_SYMBOL_GPL(gm_dev_register_physmem);
EXPORT_SYMBOL_GPL(gm_dev_priv);
EXPORT_SYMBOL_GPL(gm_dev_hnid);
EXPORT_SYMBOL_GPL(gm_dev_name);
EXPORT_SYMBOL_GPL(gm_dev_caps);
EXPORT_SYMBOL_GPL(gm_dev_get_stats);
EXPORT_SYMBOL_GPL(gm_as_create);
EXPORT_SYMBOL_GPL(gm_as_attach);
EXPORT_SYMBOL_GPL(gm_context_detach);
EXPORT_SYMBOL_GPL(gm_context_pmap);
EXPORT_SYMBOL_GPL(gm_context_hold);
EXPORT_SYMBOL_GPL(gm_context_unhold);
EXPORT_SYMBOL_GPL(gm_dev_fault_range);
EXPORT_SYMBOL_GPL(gm_hmadvise);
EXPORT_SYMBOL_GPL(gm_dev_fault_batch);

DEFINE_STATIC_KEY_FALSE(gm_enabled_key);

/**
 * gm_enable() - turn the core-MM hooks on
 *
 * Called before the first MAP_PEER_SHARED mapping of any process exists, so
 * that no fault on a peer-shared range can miss its hook.  Idempotent.
 */
void gm_enable(void)
{
	if (!static_key_enabled(&gm_enabled_key))
		static_branch_enable(&gm_enabled_key);
}

/* /sys/kernel/mm/gmem/: one node<hnid>/ directory per device. */
static struct kobject *gm_kobj;

struct gm_node {
	struct kobject kobj;
	struct gm_dev *dev;
};

static struct gm_dev_stats gm_node_stats(struct kobject *kobj)
{
	struct gm_dev_stats stats;

	gm_dev_get_stats(container_of(kobj, struct gm_node, kobj)->dev, &stats);
	return stats;
}

static ssize_t name_show(struct kobject *kobj, struct kobj_attribute *attr,
			 char *buf)
{
	return sysfs_emit(buf, "%s\n",
			  gm_dev_name(container_of(kobj, struct gm_node, kobj)->dev));
}

/* 1 if the device raises faults, 0 if its driver prefaults ranges. */
static ssize_t faultable_show(struct kobject *kobj,
			      struct kobj_attribute *attr, char *buf)
{
	struct gm_dev *dev = container_of(kobj, struct gm_node, kobj)->dev;

	return sysfs_emit(buf, "%d\n", !!(gm_dev_caps(dev) & GM_DEV_CAP_FAULT));
}

/* Bytes of device memory GMEM manages. */
static ssize_t size_show(struct kobject *kobj, struct kobj_attribute *attr,
			 char *buf)
{
	return sysfs_emit(buf, "%llu\n",
			  gm_node_stats(kobj).dram_pages << PAGE_SHIFT);
}

/* Bytes of device memory holding pages now. */
static ssize_t resident_show(struct kobject *kobj,
			     struct kobj_attribute *attr, char *buf)
{
	return sysfs_emit(buf, "%llu\n",
			  gm_node_stats(kobj).resident_pages << PAGE_SHIFT);
}

/* Bytes of device memory not holding pages now (within the limit). */
static ssize_t free_show(struct kobject *kobj, struct kobj_attribute *attr,
			 char *buf)
{
	struct gm_dev_stats s = gm_node_stats(kobj);
	u64 used = min(s.resident_pages, s.limit_pages);

	return sysfs_emit(buf, "%llu\n", (s.limit_pages - used) << PAGE_SHIFT);
}

/* Pages moved to host memory to make room. */
static ssize_t evictions_show(struct kobject *kobj,
			      struct kobj_attribute *attr, char *buf)
{
	return sysfs_emit(buf, "%llu\n", gm_node_stats(kobj).evictions);
}

/*
 * Bytes of device memory GMEM may use.  Writing a lower value makes the
 * device evict down to it as it allocates: a way to oversubscribe a device
 * on purpose (tests) or to leave memory to something else.
 */
static ssize_t limit_show(struct kobject *kobj, struct kobj_attribute *attr,
			  char *buf)
{
	return sysfs_emit(buf, "%llu\n",
			  gm_node_stats(kobj).limit_pages << PAGE_SHIFT);
}

static ssize_t limit_store(struct kobject *kobj, struct kobj_attribute *attr,
			   const char *buf, size_t count)
{
	u64 bytes;
	int err;

	err = kstrtou64(buf, 0, &bytes);
	if (err)
		return err;
	err = gm_dev_set_limit(container_of(kobj, struct gm_node, kobj)->dev,
			       bytes);
	return err ? err : count;
}

/*
 * The free reserve, in bytes: when an allocation leaves less than
 * reserve_low free, GMEM evicts in the background until reserve_high is.
 */
static ssize_t reserve_low_show(struct kobject *kobj,
				struct kobj_attribute *attr, char *buf)
{
	return sysfs_emit(buf, "%llu\n",
			  gm_node_stats(kobj).reserve_low_pages << PAGE_SHIFT);
}

static ssize_t reserve_high_show(struct kobject *kobj,
				 struct kobj_attribute *attr, char *buf)
{
	return sysfs_emit(buf, "%llu\n",
			  gm_node_stats(kobj).reserve_high_pages << PAGE_SHIFT);
}

/*
 * Density prefetch (gm_dev_fault_batch()): a device fault brings along the
 * largest aligned block of 64 KiB up to 2 MiB around it of which more than
 * this percentage is resident on the device or faulting.  0 turns it off.
 */
static ssize_t prefetch_threshold_show(struct kobject *kobj,
				       struct kobj_attribute *attr, char *buf)
{
	struct gm_node *node = container_of(kobj, struct gm_node, kobj);

	return sysfs_emit(buf, "%u\n", gm_dev_prefetch_threshold(node->dev));
}

static ssize_t prefetch_threshold_store(struct kobject *kobj,
					struct kobj_attribute *attr,
					const char *buf, size_t count)
{
	struct gm_node *node = container_of(kobj, struct gm_node, kobj);
	unsigned int percent;
	int err;

	err = kstrtouint(buf, 0, &percent);
	if (err)
		return err;
	err = gm_dev_set_prefetch_threshold(node->dev, percent);
	return err ? err : count;
}

/* Bytes processes pinned on the device (MADV_PIN); never more than limit. */
static ssize_t pinned_show(struct kobject *kobj, struct kobj_attribute *attr,
			   char *buf)
{
	return sysfs_emit(buf, "%llu\n",
			  gm_node_stats(kobj).pinned_pages << PAGE_SHIFT);
}

/* Batches of device faults served, and pages density prefetch added. */
static ssize_t fault_batches_show(struct kobject *kobj,
				  struct kobj_attribute *attr, char *buf)
{
	return sysfs_emit(buf, "%llu\n", gm_node_stats(kobj).fault_batches);
}

static ssize_t prefetched_show(struct kobject *kobj,
			       struct kobj_attribute *attr, char *buf)
{
	return sysfs_emit(buf, "%llu\n", gm_node_stats(kobj).prefetched);
}

static struct kobj_attribute gm_name_attr = __ATTR_RO(name);
static struct kobj_attribute gm_free_attr = __ATTR_RO(free);
static struct kobj_attribute gm_evictions_attr = __ATTR_RO(evictions);
static struct kobj_attribute gm_limit_attr = __ATTR_RW(limit);
static struct kobj_attribute gm_faultable_attr = __ATTR_RO(faultable);
static struct kobj_attribute gm_size_attr = __ATTR_RO(size);
static struct kobj_attribute gm_resident_attr = __ATTR_RO(resident);
static struct kobj_attribute gm_reserve_low_attr = __ATTR_RO(reserve_low);
static struct kobj_attribute gm_reserve_high_attr = __ATTR_RO(reserve_high);
static struct kobj_attribute gm_prefetch_threshold_attr =
	__ATTR_RW(prefetch_threshold);
static struct kobj_attribute gm_fault_batches_attr = __ATTR_RO(fault_batches);
static struct kobj_attribute gm_prefetched_attr = __ATTR_RO(prefetched);
static struct kobj_attribute gm_pinned_attr = __ATTR_RO(pinned);

static struct attribute *gm_node_attrs[] = {
	&gm_name_attr.attr,
	&gm_faultable_attr.attr,
	&gm_size_attr.attr,
	&gm_resident_attr.attr,
	&gm_free_attr.attr,
	&gm_evictions_attr.attr,
	&gm_limit_attr.attr,
	&gm_reserve_low_attr.attr,
	&gm_reserve_high_attr.attr,
	&gm_prefetch_threshold_attr.attr,
	&gm_fault_batches_attr.attr,
	&gm_prefetched_attr.attr,
	&gm_pinned_attr.attr,
	NULL,
};
ATTRIBUTE_GROUPS(gm_node);

static void gm_node_release(struct kobject *kobj)
{
	kfree(container_of(kobj, struct gm_node, kobj));
}

static const struct kobj_type gm_node_ktype = {
	.release = gm_node_release,
	.sysfs_ops = &kobj_sysfs_ops,
	.default_groups = gm_node_groups,
};

/**
 * gm_sysfs_add_node() - create /sys/kernel/mm/gmem/node<hnid>/ for a device
 * @dev: the device, alive until gm_sysfs_remove_node()
 * @hnid: its node id
 *
 * Return: the node, to pass to gm_sysfs_remove_node(), or an ERR_PTR().
 */
void *gm_sysfs_add_node(struct gm_dev *dev, int hnid)
{
	struct gm_node *node;
	int err;

	if (!gm_kobj)
		return ERR_PTR(-ENODEV);
	node = kzalloc_obj(*node, GFP_KERNEL);
	if (!node)
		return ERR_PTR(-ENOMEM);
	node->dev = dev;
	err = kobject_init_and_add(&node->kobj, &gm_node_ktype, gm_kobj,
				   "node%d", hnid);
	if (err) {
		kobject_put(&node->kobj);
		return ERR_PTR(err);
	}
	return node;
}

/*
 * Removes a node directory.  Once kobject_del() returns no reader is in a
 * show function, so the device may go.
 */
void gm_sysfs_remove_node(void *node)
{
	struct gm_node *n = node;

	kobject_del(&n->kobj);
	kobject_put(&n->kobj);
}

/*
 * /sys/kernel/mm/gmem/thrashing/: a page the CPU took back from a device
 * threshold times within window_ms thrashes; a device fault then maps it in
 * place (in_place counts those) if it can.  threshold 0 turns thrashing
 * control off.
 */
static ssize_t gm_store_uint(const char *buf, size_t count,
			     int (*set)(unsigned int))
{
	unsigned int v;
	int err;

	err = kstrtouint(buf, 0, &v);
	if (!err)
		err = set(v);
	return err ? err : count;
}

static ssize_t threshold_show(struct kobject *kobj, struct kobj_attribute *attr,
			      char *buf)
{
	return sysfs_emit(buf, "%u\n", gm_thrashing_threshold());
}

static ssize_t threshold_store(struct kobject *kobj,
			       struct kobj_attribute *attr, const char *buf,
			       size_t count)
{
	return gm_store_uint(buf, count, gm_set_thrashing_threshold);
}

static ssize_t window_ms_show(struct kobject *kobj, struct kobj_attribute *attr,
			      char *buf)
{
	return sysfs_emit(buf, "%u\n", gm_thrashing_window_ms());
}

static ssize_t window_ms_store(struct kobject *kobj,
			       struct kobj_attribute *attr, const char *buf,
			       size_t count)
{
	return gm_store_uint(buf, count, gm_set_thrashing_window_ms);
}

static ssize_t in_place_show(struct kobject *kobj, struct kobj_attribute *attr,
			     char *buf)
{
	return sysfs_emit(buf, "%llu\n", gm_thrashing_in_place());
}

static struct kobj_attribute gm_threshold_attr = __ATTR_RW(threshold);
static struct kobj_attribute gm_window_ms_attr = __ATTR_RW(window_ms);
static struct kobj_attribute gm_in_place_attr = __ATTR_RO(in_place);

static struct attribute *gm_thrashing_attrs[] = {
	&gm_threshold_attr.attr,
	&gm_window_ms_attr.attr,
	&gm_in_place_attr.attr,
	NULL,
};

static const struct attribute_group gm_thrashing_group = {
	.name = "thrashing",
	.attrs = gm_thrashing_attrs,
};

SYSCALL_DEFINE4(hmadvise, int, hnid, unsigned long, start, size_t, len,
		int, advice)
{
	return gm_hmadvise(hnid, untagged_addr(start), len, advice);
}

/*
 * The core must exist before any driver (device_initcall) registers a
 * device with it, hence subsys_initcall rather than a built-in module!().
 */
static int __init gm_init(void)
{
	/* Without it devices just have no sysfs directory. */
	gm_kobj = kobject_create_and_add("gmem", mm_kobj);
	if (gm_kobj && sysfs_create_group(gm_kobj, &gm_thrashing_group))
		pr_warn("gmem: no sysfs directory for thrashing control\n");
	return gm_core_init();
}
subsys_initcall(gm_init);
