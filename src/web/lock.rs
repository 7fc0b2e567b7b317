//! A first-in, first-out async lock: calls on one model run one after another, in the order
//! they were made, never interleaved.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::rc::Rc;

use futures_channel::oneshot;

#[derive(Default)]
pub(crate) struct AsyncLock {
    busy: Cell<bool>,
    waiters: RefCell<VecDeque<oneshot::Sender<()>>>,
}

pub(crate) struct Guard(Rc<AsyncLock>);

impl AsyncLock {
    pub(crate) fn is_busy(&self) -> bool {
        self.busy.get()
    }

    pub(crate) async fn acquire(self: &Rc<Self>) -> Guard {
        if !self.busy.get() {
            self.busy.set(true);
            return Guard(self.clone());
        }
        let (tx, rx) = oneshot::channel();
        self.waiters.borrow_mut().push_back(tx);
        // The releasing guard hands the lock over by sending; `busy` stays set. A dropped
        // sender cannot happen (guards always send or clear `busy`), but is treated the same.
        let _ = rx.await;
        Guard(self.clone())
    }
}

impl Drop for Guard {
    fn drop(&mut self) {
        loop {
            let next = self.0.waiters.borrow_mut().pop_front();
            match next {
                // A waiter whose future was dropped refuses the hand-over: try the next one.
                Some(tx) => {
                    if tx.send(()).is_ok() {
                        return;
                    }
                }
                None => {
                    self.0.busy.set(false);
                    return;
                }
            }
        }
    }
}
