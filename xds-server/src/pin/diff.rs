//! A unified line diff of two definitions (their canonical forms laid out one member per
//! line), for people reviewing drift. Longest common subsequence over lines: definitions
//! are small, and bounded here ([`MAX_LINES`]).

/// Definitions longer than this are shown whole, old then new, instead of diffed.
pub const MAX_LINES: usize = 2000;

/// `-` lines only in `old`, `+` lines only in `new`, two-space-prefixed common lines.
pub fn unified(old: &str, new: &str) -> String {
    let a: Vec<&str> = if old.is_empty() { Vec::new() } else { old.lines().collect() };
    let b: Vec<&str> = if new.is_empty() { Vec::new() } else { new.lines().collect() };
    if a.len() > MAX_LINES || b.len() > MAX_LINES {
        let mut out: Vec<String> = a.iter().map(|l| format!("-{l}")).collect();
        out.extend(b.iter().map(|l| format!("+{l}")));
        return out.join("\n");
    }
    // lcs[i][j]: length of the LCS of a[i..] and b[j..].
    let mut lcs = vec![vec![0usize; b.len() + 1]; a.len() + 1];
    for i in (0..a.len()).rev() {
        for j in (0..b.len()).rev() {
            lcs[i][j] = if a[i] == b[j] { lcs[i + 1][j + 1] + 1 } else { lcs[i + 1][j].max(lcs[i][j + 1]) };
        }
    }
    let (mut i, mut j) = (0, 0);
    let mut out = Vec::new();
    while i < a.len() || j < b.len() {
        if i < a.len() && j < b.len() && a[i] == b[j] {
            out.push(format!(" {}", a[i]));
            i += 1;
            j += 1;
        } else if i < a.len() && (j == b.len() || lcs[i + 1][j] >= lcs[i][j + 1]) {
            // Removals first, as `diff -u` shows them.
            out.push(format!("-{}", a[i]));
            i += 1;
        } else {
            out.push(format!("+{}", b[j]));
            j += 1;
        }
    }
    out.join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changed_lines_are_marked() {
        assert_eq!(unified("a\nb\nc", "a\nx\nc"), " a\n-b\n+x\n c");
        assert_eq!(unified("", "a"), "+a");
        assert_eq!(unified("a", ""), "-a");
        assert_eq!(unified("a\nb", "a\nb"), " a\n b");
    }
}
