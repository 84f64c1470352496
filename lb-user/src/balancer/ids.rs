//! Backend ids: a slot in the data path's per-backend maps and a generation.

use std::collections::VecDeque;

use lb_common::maps::{MAX_BACKENDS, backend_index};

/// Allocates backend ids: slot index in the low bits, a generation above that changes on every
/// reuse of the slot; freed slots are reused last-in-last-out (FIFO) to make reuse rare.
#[derive(Debug, Clone)]
pub(super) struct BackendIds {
    pub(super) free: VecDeque<u32>,
    generation: Vec<u16>,
}

impl BackendIds {
    pub(super) fn new() -> Self {
        Self {
            free: (0..MAX_BACKENDS).collect(),
            generation: vec![0; MAX_BACKENDS as usize],
        }
    }

    pub(super) fn alloc(&mut self) -> Option<u32> {
        let index = self.free.pop_front()?;
        let generation = &mut self.generation[index as usize];
        *generation = generation.wrapping_add(1);
        Some(u32::from(*generation) << 16 | index)
    }

    pub(super) fn free(&mut self, id: u32) {
        self.free.push_back(backend_index(id));
    }

    /// Takes `id` (index and generation) out of the free slots; false if it is not free.
    pub(super) fn reserve(&mut self, id: u32) -> bool {
        let index = backend_index(id);
        let Some(at) = self.free.iter().position(|&i| i == index) else {
            return false;
        };
        self.free.remove(at);
        self.generation[index as usize] = (id >> 16) as u16;
        true
    }
}
