//! `method=threaded`: a pool of threads in one process, with runfcgi's
//! bounds (`minspare`..`maxspare` idle threads, at most `maxchildren`,
//! each replaced after `maxrequests`). Each thread has its own
//! [`crate::back::Back`].
//!
//! Owns: starting, retiring and stopping the threads (bounded: a thread that
//! does not finish in time is abandoned when the process exits).
//! Must not: fork (the process has threads) or share a back between threads.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::worker::{self, Bounds, End, Listener, Status};
use crate::back::{self, STOP_GRACE};
use crate::config::Config;
use crate::sys::{self, SignalPipe};

const TICK: Duration = Duration::from_millis(250);

enum Event {
    Report(Status),
    Exited(End),
}

struct Slot {
    busy: bool,
    retire: Arc<AtomicBool>,
}

/// Run the pool until a stop signal, then wait (bounded) for the threads.
pub fn run(
    listener: Arc<Listener>,
    config: Arc<Config>,
    bounds: Bounds,
    signals: &'static SignalPipe,
    on_tick: &mut dyn FnMut(),
) {
    let (tx, rx) = mpsc::channel::<(u64, Event)>();
    let mut slots: HashMap<u64, Slot> = HashMap::new();
    let mut next_id = 0u64;
    bounds.log_start("threaded");
    while !sys::stop_requested() {
        on_tick();
        if sys::stop_requested() {
            break;
        }
        let idle = slots
            .values()
            .filter(|s| !s.busy && !s.retire.load(Ordering::Relaxed))
            .count();
        let live = slots
            .values()
            .filter(|s| !s.retire.load(Ordering::Relaxed))
            .count();
        let (start, retire) = bounds.plan(idle, live);
        for _ in 0..start {
            let id = next_id;
            next_id += 1;
            let flag = Arc::new(AtomicBool::new(false));
            let spawned = spawn(
                id,
                Arc::clone(&listener),
                Arc::clone(&config),
                bounds,
                signals,
                Arc::clone(&flag),
                tx.clone(),
            );
            match spawned {
                Ok(()) => {
                    slots.insert(
                        id,
                        Slot {
                            busy: false,
                            retire: flag,
                        },
                    );
                }
                Err(e) => {
                    log::error!("threaded: cannot start a thread: {e}");
                    break;
                }
            }
        }
        for slot in slots
            .values()
            .filter(|s| !s.busy && !s.retire.load(Ordering::Relaxed))
            .take(retire)
        {
            slot.retire.store(true, Ordering::Relaxed);
        }
        match rx.recv_timeout(TICK) {
            Ok((id, event)) => apply(&mut slots, id, event),
            Err(_) => continue,
        }
        while let Ok((id, event)) = rx.try_recv() {
            apply(&mut slots, id, event);
        }
    }
    log::info!("stop signal received: stopping {} thread(s)", slots.len());
    let deadline = Instant::now() + STOP_GRACE + Duration::from_secs(1);
    while !slots.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            log::warn!("threaded: {} thread(s) did not stop in time", slots.len());
            break;
        }
        if let Ok((id, event)) = rx.recv_timeout(left.min(TICK)) {
            apply(&mut slots, id, event);
        }
    }
}

fn apply(slots: &mut HashMap<u64, Slot>, id: u64, event: Event) {
    match event {
        Event::Report(status) => {
            if let Some(slot) = slots.get_mut(&id) {
                slot.busy = status == Status::Busy;
            }
        }
        Event::Exited(end) => {
            log::debug!("threaded: thread {id} ended ({end:?})");
            slots.remove(&id);
        }
    }
}

fn spawn(
    id: u64,
    listener: Arc<Listener>,
    config: Arc<Config>,
    bounds: Bounds,
    signals: &'static SignalPipe,
    retire: Arc<AtomicBool>,
    tx: mpsc::Sender<(u64, Event)>,
) -> std::io::Result<()> {
    std::thread::Builder::new()
        .name(format!("worker-{id}"))
        .spawn(move || {
            let mut back = back::from_config(&config);
            let report_tx = tx.clone();
            let mut report = |s: Status| {
                let _ = report_tx.send((id, Event::Report(s)));
            };
            let retired = || retire.load(Ordering::Relaxed);
            let end = worker::run(
                worker::Worker {
                    listener: &listener,
                    limits: config.limits,
                    signals,
                    maxrequests: bounds.maxrequests,
                    alone: false,
                    retire: &retired,
                    report: &mut report,
                },
                back.as_mut(),
            );
            back.shutdown();
            let _ = tx.send((id, Event::Exited(end)));
        })
        .map(|_| ())
}
