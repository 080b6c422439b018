//! Choosing a device by the `--device` selector, shared by the GPU backends.

/// The device `selector` names among devices called `names`: an index in
/// range, else the first whose name contains the selector (case-blind).
pub fn select_device<'a>(names: impl IntoIterator<Item = &'a str>, selector: &str) -> Option<usize> {
    let names: Vec<&str> = names.into_iter().collect();
    let wanted = selector.to_lowercase();
    selector.parse::<usize>().ok().filter(|i| *i < names.len()).or_else(|| names.iter().position(|n| n.to_lowercase().contains(&wanted)))
}

/// Why [`choose_device`] chose none.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Unchosen {
    /// There are no devices.
    NoDevices,
    /// None matches the selector; the devices there are, as `index: name`.
    NotFound(Vec<String>),
    /// The device chosen cannot be used: its name, and why.
    Unusable(String, String),
}

/// The device to use among `devices` (each its name and why it is
/// unusable, `None` when it is usable): the one `selector` names (see
/// [`select_device`]), else the usable one of lowest `rank`, the first
/// among equals. A device that cannot be used is never chosen.
pub fn choose_device(devices: &[(&str, Option<&str>)], selector: Option<&str>, rank: impl Fn(usize) -> u32) -> Result<usize, Unchosen> {
    if devices.is_empty() {
        return Err(Unchosen::NoDevices);
    }
    let found = match selector {
        Some(s) => select_device(devices.iter().map(|d| d.0), s)
            .ok_or_else(|| Unchosen::NotFound(devices.iter().enumerate().map(|(i, d)| format!("{i}: {}", d.0)).collect()))?,
        None => devices.iter().enumerate().filter(|(_, d)| d.1.is_none()).min_by_key(|(i, _)| (rank(*i), *i)).map_or(0, |(i, _)| i),
    };
    match devices[found].1 {
        Some(why) => Err(Unchosen::Unusable(devices[found].0.to_owned(), why.to_owned())),
        None => Ok(found),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn choosing_by_default_rank_index_and_name() {
        let devices = [("llvmpipe", None), ("Tesla K80", Some("compute capability 3.7")), ("NVIDIA H100", None)];
        assert_eq!(choose_device(&devices, None, |_| 0), Ok(0), "the first usable device");
        assert_eq!(choose_device(&devices, None, |i| if i == 0 { 4 } else { 0 }), Ok(2), "the lowest rank among usable ones");
        assert_eq!(choose_device(&devices, Some("h100"), |_| 0), Ok(2));
        assert_eq!(choose_device(&devices, Some("1"), |_| 0), Err(Unchosen::Unusable("Tesla K80".into(), "compute capability 3.7".into())));
        let all = vec!["0: llvmpipe".to_owned(), "1: Tesla K80".into(), "2: NVIDIA H100".into()];
        assert_eq!(choose_device(&devices, Some("a100"), |_| 0), Err(Unchosen::NotFound(all)));
        assert_eq!(choose_device(&[], None, |_| 0), Err(Unchosen::NoDevices));
        assert_eq!(choose_device(&[("only", Some("broken"))], None, |_| 0), Err(Unchosen::Unusable("only".into(), "broken".into())));
    }

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
