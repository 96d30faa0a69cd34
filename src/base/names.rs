//! The one rule for index names (the `indice` a client sends, an `[index.NAME]` section, a purge
//! rule's `index`, a seed job's index): 1 to [`MAX_INDEX_LEN`] characters of `A-Z a-z 0-9 _ . -`.

/// Longest index name.
pub const MAX_INDEX_LEN: usize = 64;

/// True for a byte an index name may hold.
pub fn is_index_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"_.-".contains(&b)
}

/// True for index names of 1-[`MAX_INDEX_LEN`] characters from `A-Z a-z 0-9 _ . -`.
pub fn is_valid_index(s: &str) -> bool {
    !s.is_empty() && s.len() <= MAX_INDEX_LEN && s.bytes().all(is_index_byte)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_names() {
        for ok in ["123", "a", "layer_1.day-2", &"x".repeat(MAX_INDEX_LEN)] {
            assert!(is_valid_index(ok), "{ok}");
        }
        for bad in ["", "a b", "a/b", "é", &"x".repeat(MAX_INDEX_LEN + 1)] {
            assert!(!is_valid_index(bad), "{bad}");
        }
    }
}
