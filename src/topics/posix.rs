//! POSIX extended regular expressions through libc's `regcomp`/`regexec`: the engine librdkafka
//! itself matches `^` subscriptions with (it is built with `HAVE_REGEX` wherever libc has
//! `regcomp`, and then calls `regcomp(pattern, REG_EXTENDED | REG_NOSUB)` and `regexec`), in
//! the same process and locale. Using the same engine, rather than a Rust one with another
//! syntax, is what makes the daemon's own idea of the matched topics (`status`, `topics list`,
//! the dead-letter filters) agree with the topics the consumer is assigned.

use std::ffi::{CString, c_char};

/// One compiled pattern, freed on drop.
pub(super) struct Regex {
    // Boxed: libc gets a pointer to it at compile time; it must not move while compiled.
    re: Box<libc::regex_t>,
}

impl Regex {
    /// Compiles `pattern` as librdkafka does; `Err` carries libc's reason.
    pub(super) fn new(pattern: &str) -> Result<Regex, String> {
        let c = CString::new(pattern).map_err(|_| "contains a NUL byte".to_string())?;
        // SAFETY: an all-zero regex_t is a valid target for regcomp, which initialises it.
        let mut re: Box<libc::regex_t> = Box::new(unsafe { std::mem::zeroed() });
        // SAFETY: `re` and `c` are live for the call; libc copies what it keeps of the text.
        let rc =
            unsafe { libc::regcomp(&mut *re, c.as_ptr(), libc::REG_EXTENDED | libc::REG_NOSUB) };
        if rc != 0 {
            let mut buf = [0 as c_char; 256];
            // SAFETY: regerror writes at most `buf.len()` bytes, NUL-terminated.
            unsafe { libc::regerror(rc, &*re, buf.as_mut_ptr(), buf.len()) };
            // SAFETY: NUL-terminated by regerror above.
            let text = unsafe { std::ffi::CStr::from_ptr(buf.as_ptr()) };
            return Err(text.to_string_lossy().into_owned());
        }
        Ok(Regex { re })
    }

    /// Whether the pattern matches anywhere in `text` (`^` anchors it at the start, as in
    /// librdkafka, which also searches rather than matching the whole name).
    pub(super) fn is_match(&self, text: &str) -> bool {
        let Ok(c) = CString::new(text) else {
            return false; // no Kafka topic name holds a NUL byte
        };
        // SAFETY: `self.re` was compiled by regcomp; REG_NOSUB needs no match array.
        unsafe { libc::regexec(&*self.re, c.as_ptr(), 0, std::ptr::null_mut(), 0) == 0 }
    }
}

impl Drop for Regex {
    fn drop(&mut self) {
        // SAFETY: compiled by regcomp (a failed compile never builds a `Regex`), freed once.
        unsafe { libc::regfree(&mut *self.re) };
    }
}
