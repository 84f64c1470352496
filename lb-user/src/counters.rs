//! Typed access to the XDP program's maps.

use std::fmt;

use anyhow::Context as _;
use aya::{Ebpf, maps::PerCpuArray};
use lb_common::{
    Counter,
    counters::{COUNTERS_MAP, EVENTS_MAP, Event},
};

/// The global outcome counters, summed over CPUs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Counters(Vec<(Counter, u64)>);

impl Counters {
    /// Reads every counter from the program's `COUNTERS` map.
    pub fn read(ebpf: &Ebpf) -> anyhow::Result<Self> {
        let map = ebpf
            .map(COUNTERS_MAP)
            .with_context(|| format!("no map {COUNTERS_MAP} in the XDP object"))?;
        Self::from_map(&PerCpuArray::try_from(map)?)
    }

    /// Reads every counter from a `COUNTERS` map.
    pub fn from_map<T: std::borrow::Borrow<aya::maps::MapData>>(
        array: &PerCpuArray<T, u64>,
    ) -> anyhow::Result<Self> {
        Counter::ALL
            .iter()
            .map(|&counter| {
                let per_cpu = array
                    .get(&(counter as u32), 0)
                    .with_context(|| format!("reading counter {}", counter.name()))?;
                Ok((counter, per_cpu.iter().sum()))
            })
            .collect::<anyhow::Result<_>>()
            .map(Self)
    }

    /// The value of one counter.
    pub fn get(&self, counter: Counter) -> u64 {
        self.0
            .iter()
            .find_map(|&(c, value)| (c == counter).then_some(value))
            .unwrap_or(0)
    }

    /// Every counter with its value, in index order.
    pub fn iter(&self) -> impl Iterator<Item = (Counter, u64)> + '_ {
        self.0.iter().copied()
    }

    /// Packets seen in all.
    pub fn total(&self) -> u64 {
        self.0.iter().map(|&(_, value)| value).sum()
    }
}

/// The connection tables' events ([`Event`]), summed over CPUs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Events(Vec<(Event, u64)>);

impl Events {
    /// Reads every event count from the program's `EVENTS` map.
    pub fn read(ebpf: &Ebpf) -> anyhow::Result<Self> {
        let map = ebpf
            .map(EVENTS_MAP)
            .with_context(|| format!("no map {EVENTS_MAP} in the XDP object"))?;
        Self::from_map(&PerCpuArray::try_from(map)?)
    }

    /// Reads every event count from an `EVENTS` map.
    pub fn from_map<T: std::borrow::Borrow<aya::maps::MapData>>(
        array: &PerCpuArray<T, u64>,
    ) -> anyhow::Result<Self> {
        Event::ALL
            .iter()
            .map(|&event| {
                let per_cpu = array
                    .get(&(event as u32), 0)
                    .with_context(|| format!("reading event {}", event.name()))?;
                Ok((event, per_cpu.iter().sum()))
            })
            .collect::<anyhow::Result<_>>()
            .map(Self)
    }

    /// The count of one event.
    pub fn get(&self, event: Event) -> u64 {
        self.0
            .iter()
            .find_map(|&(e, value)| (e == event).then_some(value))
            .unwrap_or(0)
    }

    /// Every event with its count, in index order.
    pub fn iter(&self) -> impl Iterator<Item = (Event, u64)> + '_ {
        self.0.iter().copied()
    }
}

impl fmt::Display for Counters {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (counter, value) in &self.0 {
            writeln!(f, "{:<24} {value:>14}", counter.name())?;
        }
        Ok(())
    }
}
