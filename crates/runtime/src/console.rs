//! Console output and the `log` backend.
//!
//! On Xen PV: the PV console ring (xenconsoled shows it in `xl console` and
//! logs it to /var/log/xen/console/guest-NAME.log). On PVH: the COM1 serial
//! port. Lines look like `[    1.234] ferrite: message`.
//!
//! Logging never waits for the console: each line is formatted whole (log
//! arguments escaped, so nothing a guest sends can forge a line) and queued
//! whole or dropped and counted; the data path never stalls on a slow or
//! absent xenconsoled.

use super::hypercall::{checked, nr, sched_poll};
use super::page::MappedPage;
use core::fmt::Write;
use xen::console::{ConsoleRing, Line, LineSink};
use xen::xen_abi::evtchnop;

enum Sink {
    None,
    Pv { sink: LineSink<MappedPage>, port: u32 },
    Serial,
}

static SINK: spin::Mutex<Sink> = spin::Mutex::new(Sink::None);
static LOGGER: Logger = Logger;

fn evtchn_send(port: u32) {
    let mut p = port;
    // SAFETY: EVTCHNOP_send reads one u32 port number.
    let _ = unsafe { checked(nr::EVENT_CHANNEL_OP, evtchnop::SEND, &mut p as *mut u32 as u64, 0) };
}

fn serial_byte(b: u8) {
    // Bounded wait for the transmit holding register (LSR bit 5).
    for _ in 0..100_000 {
        if super::pvh::inb(0x3FD) & 0x20 != 0 {
            break;
        }
    }
    super::pvh::outb(0x3F8, b);
}

impl Sink {
    /// Writes one finished line: queued whole or dropped (PV), or sent
    /// byte by byte with a bounded wait per byte (serial).
    fn put(&mut self, line: &[u8]) {
        match self {
            Sink::None => {}
            Sink::Serial => line.iter().for_each(|&b| serial_byte(b)),
            Sink::Pv { sink, port } => {
                if sink.put(line) {
                    evtchn_send(*port);
                }
            }
        }
    }

    fn put_fmt(&mut self, mut line: Line, args: core::fmt::Arguments<'_>) {
        let _ = line.write_fmt(args);
        self.put(line.finish());
    }
}

/// Sends console output to the PV console ring at `page`, event channel `port`.
pub(crate) fn init_pv(page: MappedPage, port: u32) {
    *SINK.lock() = Sink::Pv { sink: LineSink::new(ConsoleRing::new(page)), port };
    install_logger();
}

/// Sends console output to COM1.
pub(crate) fn init_serial() {
    *SINK.lock() = Sink::Serial;
    install_logger();
}

fn install_logger() {
    let _ = log::set_logger(&LOGGER);
    log::set_max_level(log::LevelFilter::Info);
}

/// Writes one line of the runtime's own text to the console as is (a
/// newline is added if missing).
pub fn print(args: core::fmt::Arguments<'_>) {
    SINK.lock().put_fmt(Line::raw(), args);
}

/// Console lines dropped because the ring was full.
pub fn dropped_lines() -> u64 {
    match &*SINK.lock() {
        Sink::Pv { sink, .. } => sink.dropped(),
        _ => 0,
    }
}

/// Waits (bounded, 2 s) until the backend has consumed the console ring.
pub fn drain() {
    let sink = SINK.lock();
    if let Sink::Pv { sink, port } = &*sink {
        let ring = sink.ring();
        let deadline = super::time::now() + 2_000_000_000;
        for _ in 0..200 {
            if ring.pending() == 0 || super::time::now() > deadline {
                break;
            }
            evtchn_send(*port);
            let _ = sched_poll(&[*port], super::time::now() + 10_000_000);
        }
    }
}

/// Writes even while the console lock is held (panic path).
pub(crate) fn emergency(args: core::fmt::Arguments<'_>) {
    if let Some(mut sink) = SINK.try_lock() {
        sink.put_fmt(Line::raw(), args);
    } else if super::platform() == super::Platform::Pvh {
        // On PVH the serial port needs no state.
        Sink::Serial.put_fmt(Line::raw(), args);
    }
}

struct Logger;
impl log::Log for Logger {
    fn enabled(&self, m: &log::Metadata<'_>) -> bool {
        m.level() <= log::max_level()
    }
    fn log(&self, r: &log::Record<'_>) {
        if !self.enabled(r.metadata()) {
            return;
        }
        let t = super::time::now();
        let (s, ms) = (t / 1_000_000_000, (t / 1_000_000) % 1000);
        let level = match r.level() {
            log::Level::Error => "ERROR: ",
            log::Level::Warn => "WARN: ",
            _ => "",
        };
        // The prefix is ours; the message is escaped (it may quote a guest).
        let mut line = Line::raw();
        let _ = line.write_fmt(format_args!("[{s:5}.{ms:03}] ferrite: {level}"));
        let mut line = line.into_escaped();
        let _ = line.write_fmt(*r.args());
        SINK.lock().put(line.finish());
    }
    fn flush(&self) {}
}
