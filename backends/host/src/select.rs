//! Choosing a device by the `--device` selector, shared by the GPU backends.

/// The device `selector` names among devices called `names`: an index in
/// range, else the first whose name contains the selector (case-blind).
pub fn select_device<'a>(names: impl IntoIterator<Item = &'a str>, selector: &str) -> Option<usize> {
    let names: Vec<&str> = names.into_iter().collect();
    let wanted = selector.to_lowercase();
    selector.parse::<usize>().ok().filter(|i| *i < names.len()).or_else(|| names.iter().position(|n| n.to_lowercase().contains(&wanted)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_first_then_name_part() {
        let names = ["llvmpipe", "NVIDIA H100", "2 of them"];
        assert_eq!(select_device(names, "1"), Some(1));
        assert_eq!(select_device(names, "h100"), Some(1));
        assert_eq!(select_device(names, "2"), Some(2), "an index before a name containing it");
        assert_eq!(select_device(names, "7"), None, "out of range, and no name holds it");
        assert_eq!(select_device(names, "radeon"), None);
    }
}
