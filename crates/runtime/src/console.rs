//! Console output and the `log` backend.
//!
//! On Xen PV: the PV console ring (xenconsoled shows it in `xl console` and
//! logs it to /var/log/xen/console/guest-NAME.log). On PVH: the COM1 serial
//! port. Lines look like `[    1.234] ferrite: message`.

use super::hypercall::{checked, nr, sched_poll};
use super::page::MappedPage;
use core::fmt::Write;
use xen::console::{ConsoleRing, WriteOutcome};
use xen::xen_abi::evtchnop;

enum Sink {
    None,
    Pv { ring: ConsoleRing<MappedPage>, port: u32 },
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
    fn write_bytes(&self, mut data: &[u8]) {
        match self {
            Sink::None => {}
            Sink::Serial => data.iter().for_each(|&b| serial_byte(b)),
            Sink::Pv { ring, port } => {
                // Bounded: if xenconsoled does not drain the ring, we drop
                // output after a few waits rather than hang.
                for _ in 0..40 {
                    match ring.write(data) {
                        WriteOutcome::Broken => return,
                        WriteOutcome::Queued(n) => {
                            data = &data[n..];
                            evtchn_send(*port);
                            if data.is_empty() {
                                return;
                            }
                            let _ = sched_poll(&[*port], super::time::now() + 25_000_000);
                        }
                    }
                }
            }
        }
    }
}

struct SinkWriter<'a>(&'a Sink);
impl Write for SinkWriter<'_> {
    fn write_str(&mut self, s: &str) -> core::fmt::Result {
        self.0.write_bytes(s.as_bytes());
        Ok(())
    }
}

/// Sends console output to the PV console ring at `page`, event channel `port`.
pub(crate) fn init_pv(page: MappedPage, port: u32) {
    *SINK.lock() = Sink::Pv { ring: ConsoleRing::new(page), port };
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

/// Writes formatted text to the console as is.
pub fn print(args: core::fmt::Arguments<'_>) {
    let sink = SINK.lock();
    let _ = SinkWriter(&sink).write_fmt(args);
}

/// Waits (bounded, 2 s) until the backend has consumed the console ring.
pub fn drain() {
    let sink = SINK.lock();
    if let Sink::Pv { ring, port } = &*sink {
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
    if let Some(sink) = SINK.try_lock() {
        let _ = SinkWriter(&sink).write_fmt(args);
    } else {
        // SAFETY-free fallback: on PVH the serial port needs no state.
        if super::platform() == super::Platform::Pvh {
            let _ = SinkWriter(&Sink::Serial).write_fmt(args);
        }
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
        print(format_args!("[{s:5}.{ms:03}] ferrite: {level}{}\n", r.args()));
    }
    fn flush(&self) {}
}
