// SPDX-License-Identifier: GPL-2.0
/*
 * GMEM: the C entry points of the core.
 *
 * Everything GMEM does lives in Rust (gmem.rs and its modules).  This file
 * holds only what C must provide: the system call entry, the initcall and
 * the static key that gates the core-MM hooks.
 */
#include <linux/gmem.h>
#include <linux/init.h>
#include <linux/jump_label.h>
#include <linux/mm.h>
#include <linux/syscalls.h>

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
	return gm_core_init();
}
subsys_initcall(gm_init);
