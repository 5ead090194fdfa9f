//! Reading a password without echoing it.

use std::io::{BufRead, IsTerminal, Write};

/// Asks for a password on the terminal with echo off, or reads one line
/// of stdin when it is not a terminal (scripts pipe it in).
pub fn read(prompt: &str) -> Result<String, String> {
    let stdin = std::io::stdin();
    let terminal = stdin.is_terminal();
    let mut line = String::new();
    if terminal {
        eprint!("{prompt}");
        let _ = std::io::stderr().flush();
        let _echo_off = EchoOff::new();
        stdin
            .lock()
            .read_line(&mut line)
            .map_err(|e| e.to_string())?;
        eprintln!();
    } else {
        stdin
            .lock()
            .read_line(&mut line)
            .map_err(|e| e.to_string())?;
    }
    let password = line.trim_end_matches(['\r', '\n']).to_owned();
    if password.is_empty() {
        return Err("no password given".into());
    }
    Ok(password)
}

/// Turns the terminal's echo off until dropped.
struct EchoOff {
    saved: Option<libc::termios>,
}

impl EchoOff {
    fn new() -> EchoOff {
        // SAFETY: `termios` is plain data; zeroed is a valid value for
        // tcgetattr to overwrite, and fd 0 is stdin, open for the whole
        // process. A failed call leaves echo on and changes nothing.
        unsafe {
            let mut saved: libc::termios = std::mem::zeroed();
            if libc::tcgetattr(0, &mut saved) != 0 {
                return EchoOff { saved: None };
            }
            let mut quiet = saved;
            quiet.c_lflag &= !libc::ECHO;
            if libc::tcsetattr(0, libc::TCSANOW, &quiet) != 0 {
                return EchoOff { saved: None };
            }
            EchoOff { saved: Some(saved) }
        }
    }
}

impl Drop for EchoOff {
    fn drop(&mut self) {
        if let Some(saved) = &self.saved {
            // SAFETY: restores the settings tcgetattr returned for fd 0.
            unsafe {
                libc::tcsetattr(0, libc::TCSANOW, saved);
            }
        }
    }
}
