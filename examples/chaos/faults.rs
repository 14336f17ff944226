//! The faults, injected one after another at random while the load runs:
//! any process SIGKILLed and restarted, MariaDB paused (SIGSTOP) for 2–8 s
//! or restarted, the SQS emulator restarted (what it held is lost). The
//! first few cover every kind once, in random order.

use std::time::{Duration, Instant};

use rand::seq::SliceRandom;

use crate::system::{self, Proc};

pub struct System {
    pub apis: Vec<Proc>,
    pub workers: Vec<Proc>,
    pub sqs: Proc,
}

#[derive(Clone, Copy, Debug)]
enum Fault {
    KillApi,
    KillWorker,
    PauseMariadb,
    RestartMariadb,
    RestartSqs,
}

impl Fault {
    fn name(self) -> &'static str {
        match self {
            Fault::KillApi => "an API SIGKILLed",
            Fault::KillWorker => "a worker SIGKILLed",
            Fault::PauseMariadb => "MariaDB paused",
            Fault::RestartMariadb => "MariaDB restarted",
            Fault::RestartSqs => "the SQS emulator restarted",
        }
    }
}

const KINDS: [Fault; 5] = [
    Fault::KillApi,
    Fault::KillWorker,
    Fault::PauseMariadb,
    Fault::RestartMariadb,
    Fault::RestartSqs,
];

/// A fault as it happened: its kind, what exactly, and when all was back.
#[derive(Clone, Debug)]
pub struct Record {
    pub kind: &'static str,
    pub what: String,
    pub ended: Instant,
}

fn pause(range: std::ops::Range<u64>) -> Duration {
    Duration::from_millis(rand::random_range(range))
}

/// Restarts whatever exited on its own; what it found.
fn restart_exited(procs: &mut [Proc], found: &mut Vec<String>) {
    for p in procs {
        if let Some(status) = p.exited() {
            found.push(format!("{} exited on its own ({status})", p.name));
            p.kill();
            p.start();
        }
    }
}

impl System {
    /// Injects faults until `until`; what it did, and any process that
    /// exited by itself.
    pub fn inject(&mut self, until: Instant) -> (Vec<Record>, Vec<String>) {
        let mut rng = rand::rng();
        let mut first = KINDS.to_vec();
        first.shuffle(&mut rng);
        let mut records = vec![];
        let mut exited = vec![];
        loop {
            std::thread::sleep(pause(3000..8000));
            restart_exited(&mut self.apis, &mut exited);
            restart_exited(&mut self.workers, &mut exited);
            if Instant::now() + Duration::from_secs(10) > until {
                break;
            }
            let fault = if first.is_empty() {
                KINDS[rand::random_range(0..KINDS.len())]
            } else {
                first.remove(0)
            };
            let began = Instant::now();
            let what = match fault {
                Fault::KillApi | Fault::KillWorker => {
                    let procs = match fault {
                        Fault::KillApi => &mut self.apis,
                        _ => &mut self.workers,
                    };
                    let i = rand::random_range(0..procs.len());
                    let down = pause(500..2000);
                    procs[i].kill();
                    std::thread::sleep(down);
                    procs[i].start();
                    format!(
                        "SIGKILL {}, restarted after {:.1} s",
                        procs[i].name,
                        down.as_secs_f64()
                    )
                }
                Fault::PauseMariadb => {
                    let down = pause(2000..8000);
                    system::pause_mariadb();
                    std::thread::sleep(down);
                    system::resume_mariadb();
                    format!("MariaDB paused (SIGSTOP) for {:.1} s", down.as_secs_f64())
                }
                Fault::RestartMariadb => {
                    system::restart_mariadb();
                    "MariaDB restarted".to_string()
                }
                Fault::RestartSqs => {
                    self.sqs.kill();
                    std::thread::sleep(pause(500..1500));
                    self.sqs.start();
                    "SQS emulator restarted (its messages lost)".to_string()
                }
            };
            let ended = Instant::now();
            eprintln!(
                "chaos: {what} ({:.1} s)",
                ended.duration_since(began).as_secs_f64()
            );
            records.push(Record {
                kind: fault.name(),
                what,
                ended,
            });
        }
        (records, exited)
    }
}
