//! Per-key overrides: a TOML file that raises (or lowers) a limit for one
//! account or one registered domain, for the limits that allow it.
//!
//! ```toml
//! [[override]]
//! limit = "certificatesPerDomain"
//! key = "example.co.uk"
//! burst = 1000
//! count = 1000
//! period_secs = 604800
//! comment = "ticket 42"
//! ```
//!
//! The server loads it at start (a broken file stops the start: better than
//! running without the overrides an operator granted) and then polls its
//! metadata every few seconds; a changed file is re-read, and a file that no
//! longer parses is logged while the previous overrides stay in force. A
//! missing file is simply "no overrides". The admin CLI edits it with
//! [`Overrides::set_in_file`] and [`Overrides::remove_from_file`], which
//! write a temporary file and rename it over the old one, so a reader never
//! sees half a file.

use super::{Limit, LimitName};
use anyhow::{anyhow, bail, Context};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock, Weak};
use std::time::{Duration, SystemTime};

/// One override as written in the file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OverrideEntry {
    /// The limit's name, e.g. `newOrdersPerAccount`.
    pub limit: String,
    /// An account id (`newOrdersPerAccount`) or a registered domain
    /// (`certificatesPerDomain`).
    pub key: String,
    pub burst: u64,
    pub count: u64,
    pub period_secs: u64,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub comment: String,
}

#[derive(Debug, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct OverrideFile {
    #[serde(default, rename = "override")]
    overrides: Vec<OverrideEntry>,
}

type OverrideMap = HashMap<(LimitName, String), Limit>;

/// What identifies a version of the file without reading it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Stamp {
    modified: Option<SystemTime>,
    len: u64,
    inode: u64,
}

fn stamp(path: &Path) -> Option<Stamp> {
    let m = std::fs::metadata(path).ok()?;
    #[cfg(unix)]
    let inode = std::os::unix::fs::MetadataExt::ino(&m);
    #[cfg(not(unix))]
    let inode = 0;
    Some(Stamp {
        modified: m.modified().ok(),
        len: m.len(),
        inode,
    })
}

/// The overrides in force, shared by the limiter and the reloader.
#[derive(Debug)]
pub struct Overrides {
    path: Option<PathBuf>,
    map: RwLock<Arc<OverrideMap>>,
    /// The file version `map` was read from (`None`: no file).
    seen: Mutex<Option<Stamp>>,
}

impl Overrides {
    /// No overrides, no file.
    pub fn empty() -> Arc<Overrides> {
        Arc::new(Overrides {
            path: None,
            map: RwLock::new(Arc::new(HashMap::new())),
            seen: Mutex::new(None),
        })
    }

    /// Load the file at `path` (missing: no overrides). A file that does not
    /// parse, or names a limit without overrides, is an error.
    pub fn load(path: &Path) -> anyhow::Result<Arc<Overrides>> {
        let seen = stamp(path);
        let map = match seen {
            Some(_) => parse_map(&read(path)?)
                .with_context(|| format!("rate-limit overrides {}", path.display()))?,
            None => HashMap::new(),
        };
        Ok(Arc::new(Overrides {
            path: Some(path.to_path_buf()),
            map: RwLock::new(Arc::new(map)),
            seen: Mutex::new(seen),
        }))
    }

    /// The override for this limit and id (an account id, a registered
    /// domain), if any.
    pub fn get(&self, limit: LimitName, id: &str) -> Option<Limit> {
        if !limit.allows_overrides() {
            return None;
        }
        let map = self.snapshot();
        if map.is_empty() {
            return None;
        }
        map.get(&(limit, id.to_ascii_lowercase())).copied()
    }

    /// How many overrides are in force.
    pub fn len(&self) -> usize {
        self.snapshot().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn snapshot(&self) -> Arc<OverrideMap> {
        // A poisoned lock only means a panic elsewhere while swapping an
        // Arc: the value inside is still a whole map.
        self.map.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    /// Re-read the file if it changed since it was last read. True when the
    /// overrides in force changed. A file that does not parse is logged and
    /// ignored (the previous overrides stay), and is not retried until it
    /// changes again.
    pub fn reload_if_changed(&self) -> bool {
        let Some(path) = &self.path else { return false };
        let now = stamp(path);
        let mut seen = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if *seen == now {
            return false;
        }
        *seen = now;
        let map = match now {
            None => {
                tracing::info!(
                    "rate-limit overrides {} removed: no overrides",
                    path.display()
                );
                HashMap::new()
            }
            Some(_) => match read(path).and_then(|t| parse_map(&t)) {
                Ok(m) => m,
                Err(e) => {
                    tracing::error!(
                        "rate-limit overrides {}: {e:#}; keeping the previous overrides",
                        path.display()
                    );
                    return false;
                }
            },
        };
        tracing::info!(
            "rate-limit overrides {}: {} in force",
            path.display(),
            map.len()
        );
        *self.map.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(map);
        true
    }

    /// Poll the file every `every` on the current Tokio runtime, for as long
    /// as this `Overrides` is alive.
    pub fn spawn_reloader(self: &Arc<Self>, every: Duration) -> tokio::task::JoinHandle<()> {
        let weak: Weak<Overrides> = Arc::downgrade(self);
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tick.tick().await;
                let Some(o) = weak.upgrade() else { return };
                // Metadata and a small read: cheap, but still blocking I/O.
                let _ = tokio::task::spawn_blocking(move || o.reload_if_changed()).await;
            }
        })
    }

    /// The overrides written in the file (admin CLI `list`).
    pub fn list_file(path: &Path) -> anyhow::Result<Vec<OverrideEntry>> {
        if stamp(path).is_none() {
            return Ok(Vec::new());
        }
        let file = parse_file(&read(path)?)?;
        Ok(file.overrides)
    }

    /// Add or replace the override of (`limit`, `key`) (admin CLI `set`).
    /// Refused for limits that have no overrides. Returns the entry written.
    pub fn set_in_file(
        path: &Path,
        limit: LimitName,
        key: &str,
        burst: u64,
        count: u64,
        period_secs: u64,
        comment: &str,
    ) -> anyhow::Result<OverrideEntry> {
        let key = normalize_key(limit, key)?;
        Limit::new(burst, count, period_secs).map_err(|e| anyhow!("{limit}: {e}"))?;
        let mut file = if stamp(path).is_some() {
            parse_file(&read(path)?)?
        } else {
            OverrideFile::default()
        };
        let entry = OverrideEntry {
            limit: limit.as_str().to_string(),
            key,
            burst,
            count,
            period_secs,
            comment: comment.to_string(),
        };
        match file
            .overrides
            .iter_mut()
            .find(|e| e.limit == entry.limit && e.key == entry.key)
        {
            Some(slot) => *slot = entry.clone(),
            None => file.overrides.push(entry.clone()),
        }
        write_atomically(path, &file)?;
        Ok(entry)
    }

    /// Remove the override of (`limit`, `key`) (admin CLI `remove`). False
    /// when there was none.
    pub fn remove_from_file(path: &Path, limit: LimitName, key: &str) -> anyhow::Result<bool> {
        let key = normalize_key(limit, key)?;
        if stamp(path).is_none() {
            return Ok(false);
        }
        let mut file = parse_file(&read(path)?)?;
        let before = file.overrides.len();
        file.overrides
            .retain(|e| !(e.limit == limit.as_str() && e.key == key));
        if file.overrides.len() == before {
            return Ok(false);
        }
        write_atomically(path, &file)?;
        Ok(true)
    }
}

fn read(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

/// Parse and check every entry, so a file the server would refuse is never
/// written by the CLI either.
fn parse_file(text: &str) -> anyhow::Result<OverrideFile> {
    let file: OverrideFile = toml::from_str(text).map_err(|e| anyhow!("{e}"))?;
    parse_entries(&file.overrides)?;
    Ok(file)
}

fn parse_map(text: &str) -> anyhow::Result<OverrideMap> {
    let file: OverrideFile = toml::from_str(text).map_err(|e| anyhow!("{e}"))?;
    parse_entries(&file.overrides)
}

fn parse_entries(entries: &[OverrideEntry]) -> anyhow::Result<OverrideMap> {
    let mut map = HashMap::new();
    for (i, e) in entries.iter().enumerate() {
        let at = || format!("override #{} ({} {:?})", i + 1, e.limit, e.key);
        let limit = LimitName::parse(&e.limit).ok_or_else(|| {
            anyhow!(
                "{}: unknown limit {:?} (overrides exist for newOrdersPerAccount and \
                 certificatesPerDomain)",
                at(),
                e.limit
            )
        })?;
        let key = normalize_key(limit, &e.key).with_context(at)?;
        let l =
            Limit::new(e.burst, e.count, e.period_secs).map_err(|m| anyhow!("{}: {m}", at()))?;
        if map.insert((limit, key), l).is_some() {
            bail!("{}: duplicate override", at());
        }
    }
    Ok(map)
}

/// The canonical form of an override key, or why it is not one.
fn normalize_key(limit: LimitName, key: &str) -> anyhow::Result<String> {
    let key = key.trim();
    match limit {
        LimitName::NewOrdersPerAccount => match key.parse::<i64>() {
            Ok(id) if id > 0 => Ok(id.to_string()),
            _ => bail!("{limit}: the key must be an account id (a positive integer), not {key:?}"),
        },
        LimitName::CertificatesPerDomain => {
            let d = key.trim_end_matches('.').to_ascii_lowercase();
            let ok = d.contains('.')
                && d.len() <= 253
                && d.split('.').all(|l| {
                    !l.is_empty()
                        && l.bytes()
                            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
                });
            if !ok {
                bail!("{limit}: the key must be a registered domain such as example.co.uk, not {key:?}");
            }
            Ok(d)
        }
        other => bail!(
            "{other} cannot be overridden: overrides exist only for newOrdersPerAccount \
             (by account id) and certificatesPerDomain (by registered domain)"
        ),
    }
}

fn write_atomically(path: &Path, file: &OverrideFile) -> anyhow::Result<()> {
    let body = toml::to_string(file).context("rendering overrides")?;
    let text = format!(
        "# Cairn rate-limit overrides, read by the running server within seconds.\n\
         # Edit with `cairn admin overrides list|set|remove`.\n\n{body}"
    );
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "overrides".into());
    let tmp = dir.join(format!(".{name}.{}.tmp", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(e).with_context(|| format!("writing {}", path.display()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_list_remove_and_refusals() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/overrides.toml");
        assert!(Overrides::list_file(&path).unwrap().is_empty());
        Overrides::set_in_file(
            &path,
            LimitName::NewOrdersPerAccount,
            "42",
            1000,
            1000,
            10_800,
            "",
        )
        .unwrap();
        Overrides::set_in_file(
            &path,
            LimitName::CertificatesPerDomain,
            "Example.CO.uk.",
            500,
            500,
            604_800,
            "ticket 7",
        )
        .unwrap();
        // Replacing keeps one entry.
        Overrides::set_in_file(
            &path,
            LimitName::NewOrdersPerAccount,
            "42",
            2000,
            2000,
            10_800,
            "",
        )
        .unwrap();
        let l = Overrides::list_file(&path).unwrap();
        assert_eq!(l.len(), 2);
        assert_eq!(l[0].burst, 2000);
        assert_eq!(l[1].key, "example.co.uk");
        assert_eq!(l[1].comment, "ticket 7");

        let o = Overrides::load(&path).unwrap();
        assert_eq!(
            o.get(LimitName::NewOrdersPerAccount, "42").unwrap().burst,
            2000
        );
        assert_eq!(
            o.get(LimitName::CertificatesPerDomain, "example.co.uk")
                .unwrap()
                .burst,
            500
        );
        assert!(o.get(LimitName::NewOrdersPerAccount, "43").is_none());

        let e = Overrides::set_in_file(&path, LimitName::CertificatesPerFqdnSet, "x", 1, 1, 1, "")
            .unwrap_err();
        assert!(format!("{e:#}").contains("cannot be overridden"), "{e:#}");
        let e = Overrides::set_in_file(&path, LimitName::NewOrdersPerAccount, "abc", 1, 1, 1, "")
            .unwrap_err();
        assert!(format!("{e:#}").contains("account id"), "{e:#}");
        assert!(
            Overrides::set_in_file(&path, LimitName::NewOrdersPerAccount, "1", 0, 1, 1, "")
                .is_err()
        );

        assert!(Overrides::remove_from_file(&path, LimitName::NewOrdersPerAccount, "42").unwrap());
        assert!(!Overrides::remove_from_file(&path, LimitName::NewOrdersPerAccount, "42").unwrap());
        assert_eq!(Overrides::list_file(&path).unwrap().len(), 1);
        // No temporary files left behind.
        let names: Vec<_> = std::fs::read_dir(dir.path().join("sub"))
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names.len(), 1, "{names:?}");
    }

    #[test]
    fn bad_files_are_refused_at_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("o.toml");
        for bad in [
            "[[override]]\nlimit = \"newRegistrationsPerIp\"\nkey = \"1.2.3.4\"\nburst = 1\ncount = 1\nperiod_secs = 1\n",
            "[[override]]\nlimit = \"newOrdersPerAccount\"\nkey = \"1\"\nburst = 1\ncount = 1\n",
            "[[override]]\nlimit = \"newOrdersPerAccount\"\nkey = \"1\"\nburst = 1\ncount = 1\nperiod_secs = 1\nextra = 2\n",
            "not toml [",
        ] {
            std::fs::write(&path, bad).unwrap();
            assert!(Overrides::load(&path).is_err(), "{bad}");
        }
        let dup = "[[override]]\nlimit = \"newOrdersPerAccount\"\nkey = \"1\"\nburst = 1\ncount = 1\nperiod_secs = 1\n";
        std::fs::write(&path, format!("{dup}{dup}")).unwrap();
        let e = Overrides::load(&path).unwrap_err();
        assert!(format!("{e:#}").contains("duplicate"), "{e:#}");
    }

    #[test]
    fn reload_picks_up_changes_and_keeps_the_last_good_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("o.toml");
        let o = Overrides::load(&path).unwrap();
        assert!(o.is_empty());
        assert!(!o.reload_if_changed());

        Overrides::set_in_file(&path, LimitName::NewOrdersPerAccount, "7", 9, 9, 60, "").unwrap();
        assert!(o.reload_if_changed());
        assert_eq!(o.get(LimitName::NewOrdersPerAccount, "7").unwrap().burst, 9);
        assert!(!o.reload_if_changed(), "unchanged file is not re-read");

        // A broken edit: logged, previous overrides stay.
        std::fs::write(&path, "[[override]]\nlimit = 3\n").unwrap();
        assert!(!o.reload_if_changed());
        assert_eq!(o.get(LimitName::NewOrdersPerAccount, "7").unwrap().burst, 9);

        // Fixed again; then removed altogether.
        Overrides::set_in_file(&path, LimitName::NewOrdersPerAccount, "7", 11, 11, 60, "")
            .unwrap_err(); // the broken file is refused by the CLI too
        std::fs::remove_file(&path).unwrap();
        assert!(o.reload_if_changed());
        assert!(o.get(LimitName::NewOrdersPerAccount, "7").is_none());
        Overrides::set_in_file(&path, LimitName::NewOrdersPerAccount, "7", 11, 11, 60, "").unwrap();
        assert!(o.reload_if_changed());
        assert_eq!(
            o.get(LimitName::NewOrdersPerAccount, "7").unwrap().burst,
            11
        );
    }

    #[tokio::test]
    async fn reloader_task_applies_edits_without_restart() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("o.toml");
        let o = Overrides::load(&path).unwrap();
        let task = o.spawn_reloader(Duration::from_millis(20));
        Overrides::set_in_file(
            &path,
            LimitName::CertificatesPerDomain,
            "example.com",
            3,
            3,
            60,
            "",
        )
        .unwrap();
        let mut ok = false;
        for _ in 0..200 {
            if o.get(LimitName::CertificatesPerDomain, "example.com")
                .is_some()
            {
                ok = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(ok, "reloader did not pick up the new file");
        task.abort();
    }
}
