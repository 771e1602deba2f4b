//! Heap accounting by owner. The benchmark runs the adoption tool (plan, backfill) in the same
//! process as its stand-ins (the CRM sandbox, the sync function's instances, the state kept in
//! memory), which all grow with the record count. To see the tool's own memory, every allocation
//! carries a small header naming its owner: the thread's account when it was made. The tool's
//! thread counts as the tool; calls it makes into a stand-in are counted as the world's
//! ([`world`]). Frees are charged to the allocation's owner, whichever thread frees it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, Ordering};
use std::task::{Context, Poll};

const WORLD: u64 = 0;
const TOOL: u64 = 1;

static TOOL_LIVE: AtomicI64 = AtomicI64::new(0);
static TOOL_PEAK: AtomicI64 = AtomicI64::new(0);

thread_local! {
    static ACCOUNT: Cell<u64> = const { Cell::new(WORLD) };
}

pub struct Accounting;

/// The header before each block: as large as the block's alignment, at least 16 bytes, with the
/// owner in its last 8.
fn header(layout: &Layout) -> usize {
    layout.align().max(16)
}

/// The block with its header; `None` when that no longer fits a layout.
fn padded(layout: &Layout) -> Option<Layout> {
    let size = layout.size().checked_add(header(layout))?;
    Layout::from_size_align(size, layout.align().max(16)).ok()
}

unsafe impl GlobalAlloc for Accounting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let Some(padded) = padded(&layout) else {
            return std::ptr::null_mut();
        };
        let base = System.alloc(padded);
        if base.is_null() {
            return base;
        }
        let owner = ACCOUNT.try_with(Cell::get).unwrap_or(WORLD);
        let block = base.add(header(&layout));
        (block.sub(8) as *mut u64).write(owner);
        if owner == TOOL {
            let live = TOOL_LIVE.fetch_add(layout.size() as i64, Ordering::Relaxed) + layout.size() as i64;
            TOOL_PEAK.fetch_max(live, Ordering::Relaxed);
        }
        block
    }

    unsafe fn dealloc(&self, block: *mut u8, layout: Layout) {
        if (block.sub(8) as *const u64).read() == TOOL {
            TOOL_LIVE.fetch_sub(layout.size() as i64, Ordering::Relaxed);
        }
        // The same layout `alloc` made, which fitted then.
        if let Some(padded) = padded(&layout) {
            System.dealloc(block.sub(header(&layout)), padded);
        }
    }
}

/// Counts this thread's allocations as the tool's from now on.
pub fn enter_tool() {
    ACCOUNT.with(|account| account.set(TOOL));
}

/// The tool's highest live heap since the last reset, and starts counting again from now.
pub fn take_tool_peak() -> i64 {
    TOOL_PEAK.swap(TOOL_LIVE.load(Ordering::Relaxed), Ordering::Relaxed)
}

/// A future whose work is counted as the world's: the tool's calls into the stand-ins.
pub struct World<F>(Pin<Box<F>>);

pub fn world<F: Future>(future: F) -> World<F> {
    World(Box::pin(future))
}

impl<F: Future> Future for World<F> {
    type Output = F::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let before = ACCOUNT.with(|account| account.replace(WORLD));
        let result = self.0.as_mut().poll(cx);
        ACCOUNT.with(|account| account.set(before));
        result
    }
}
