//! What `/proc/PID/stat` says of a process: whether it still runs, whether a signal is
//! killing it, and when it started (so that a pid taken by another process is not taken for
//! the one it named).

/// The process is exiting (`PF_EXITING`, in the flags).
const PF_EXITING: u64 = 0x4;

/// The fields of a process's stat line that are read here.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProcStat {
    /// Its state (field 3): `Z` for a zombie, `X` dead.
    pub state: char,
    /// Its flags (field 9).
    pub flags: u64,
    /// When it started, in clock ticks after boot (field 22).
    pub start: u64,
    /// Its exit code (field 52; 0 where the kernel does not give it).
    pub exit_code: i64,
}

impl ProcStat {
    /// Reads process `pid`'s stat; `None` if it is gone (or the line cannot be read).
    pub fn of(pid: u32) -> Option<ProcStat> {
        ProcStat::parse(&std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?)
    }

    /// Parses a stat line (the command name, field 2, may hold spaces and parentheses).
    pub fn parse(line: &str) -> Option<ProcStat> {
        let (_, rest) = line.rsplit_once(')')?;
        let mut fields = rest.split_whitespace();
        let state = fields.next()?.chars().next()?;
        let flags = fields.nth(9 - 4)?.parse().ok()?;
        let start = fields.nth(22 - 9 - 1)?.parse().ok()?;
        let exit_code = fields
            .nth(52 - 22 - 1)
            .and_then(|f| f.parse().ok())
            .unwrap_or(0);
        Some(ProcStat {
            state,
            flags,
            start,
            exit_code,
        })
    }

    /// Neither exiting nor exited (a zombie not yet reaped is not running).
    pub fn running(&self) -> bool {
        !matches!(self.state, 'Z' | 'X' | 'x') && self.flags & PF_EXITING == 0
    }

    /// Exiting because a signal killed it (its descriptors are being closed by the kernel,
    /// not by the program).
    pub fn killed_by_signal(&self) -> bool {
        self.flags & PF_EXITING != 0 && self.exit_code & 0x7f != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stat line with `state`, `flags` (field 9), `start` (22) and `exit_code` (52), and a
    /// command name with spaces and a parenthesis.
    fn line(state: char, flags: u64, start: u64, exit_code: i64) -> String {
        let mut fields: Vec<String> = (3..=52).map(|i| i.to_string()).collect();
        fields[0] = state.to_string();
        fields[9 - 3] = flags.to_string();
        fields[22 - 3] = start.to_string();
        fields[52 - 3] = exit_code.to_string();
        format!("4242 (a) b c) {}\n", fields.join(" "))
    }

    #[test]
    fn the_fields_are_read_after_the_command_name() {
        let s = ProcStat::parse(&line('S', 0x400040, 777, 0)).unwrap();
        assert_eq!(
            (s.state, s.flags, s.start, s.exit_code),
            ('S', 0x400040, 777, 0)
        );
        assert!(ProcStat::parse("4242 (cut").is_none());
        // A kernel without the exit code (field 52): 0.
        let short = line('R', 0, 5, 9);
        let short = &short[..short.rfind(' ').unwrap()];
        assert_eq!(ProcStat::parse(short).unwrap().exit_code, 0);
    }

    #[test]
    fn a_process_exiting_from_a_signal_is_killed_and_no_other() {
        let killed = |flags, code| ProcStat::parse(&line('R', flags, 1, code)).unwrap();
        assert!(killed(0x4, 9).killed_by_signal());
        assert!(killed(0x400044, 0x86).killed_by_signal());
        assert!(!killed(0x4, 0).killed_by_signal(), "exiting normally");
        assert!(!killed(0x4, 1 << 8).killed_by_signal(), "exit(1)");
        assert!(!killed(0x400040, 9).killed_by_signal(), "not exiting");
    }

    #[test]
    fn a_zombie_or_an_exiting_process_is_not_running() {
        let p = |state, flags| ProcStat::parse(&line(state, flags, 1, 0)).unwrap();
        assert!(p('S', 0x400040).running());
        assert!(p('R', 0).running());
        assert!(!p('Z', 0).running());
        assert!(!p('X', 0).running());
        assert!(!p('R', 0x4).running());
    }
}
