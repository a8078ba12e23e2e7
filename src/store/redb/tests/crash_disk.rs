//! [`CrashDisk`]: a storage backend for redb that can crash, fill up and fail, for the
//! durability and fault tests.

use super::*;

/// One unsynced change to the simulated disk.
#[derive(Debug, Clone)]
enum Unsynced {
    Write { offset: usize, data: Vec<u8> },
    SetLen(usize),
}

impl Unsynced {
    fn apply_to(&self, image: &mut Vec<u8>) {
        match self {
            Unsynced::Write { offset, data } => {
                let end = offset + data.len();
                if image.len() < end {
                    image.resize(end, 0);
                }
                image[*offset..end].copy_from_slice(data);
            }
            Unsynced::SetLen(len) => image.resize(*len, 0),
        }
    }
}

#[derive(Debug, Default)]
struct Disk {
    /// What the running process sees (the page cache).
    live: Vec<u8>,
    /// What has reached stable storage: the state after the last completed `sync_data`.
    durable: Vec<u8>,
    /// Changes since the last `sync_data`, in order.
    unsynced: Vec<Unsynced>,
    /// While true, `sync_data` blocks (a slow disk), counting itself in `held`.
    hold: bool,
    held: usize,
    /// A full disk: writes and `set_len` past this many bytes fail with `StorageFull`.
    capacity: Option<usize>,
}

/// A simulated disk for redb: reads see every write at once, but only `sync_data` makes writes
/// durable. A "crash" image is the durable bytes, optionally with some of the unsynced writes
/// (each `write`/`set_len` call as one unit) that the OS might have written back on its own.
/// Torn writes inside a single call are not modelled.
#[derive(Debug, Clone, Default)]
pub(super) struct CrashDisk {
    disk: Arc<(Mutex<Disk>, Condvar)>,
}

impl CrashDisk {
    pub(super) fn from_image(image: Vec<u8>) -> CrashDisk {
        let disk = CrashDisk::default();
        {
            let mut d = disk.disk.0.lock().unwrap();
            d.live = image.clone();
            d.durable = image;
        }
        disk
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Disk> {
        self.disk.0.lock().unwrap()
    }

    /// The bytes a power cut leaves right now: unsynced writes are all lost.
    /// Changes written since the last sync.
    pub(super) fn unsynced_changes(&self) -> usize {
        self.lock().unsynced.len()
    }

    pub(super) fn crash_image(&self) -> Vec<u8> {
        self.lock().durable.clone()
    }

    /// The bytes a power cut leaves when the OS had written back the unsynced changes for which
    /// `keep` says true.
    pub(super) fn torn_crash_image(&self, mut keep: impl FnMut() -> bool) -> Vec<u8> {
        let d = self.lock();
        let mut image = d.durable.clone();
        for change in &d.unsynced {
            if keep() {
                change.apply_to(&mut image);
            }
        }
        image
    }

    /// No room beyond the current size (`None`: room again).
    pub(super) fn set_full(&self, full: bool) {
        let mut d = self.lock();
        d.capacity = full.then_some(d.live.len());
    }

    pub(super) fn hold_syncs(&self) {
        self.lock().hold = true;
    }

    pub(super) fn release_syncs(&self) {
        self.lock().hold = false;
        self.disk.1.notify_all();
    }

    pub(super) async fn wait_for_held_sync(&self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while self.lock().held == 0 {
            assert!(Instant::now() < deadline, "no sync arrived");
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

fn no_space() -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::StorageFull, "No space left on device")
}

fn io_error(message: &str) -> std::io::Error {
    std::io::Error::new(std::io::ErrorKind::UnexpectedEof, message.to_owned())
}

impl StorageBackend for CrashDisk {
    fn len(&self) -> Result<u64, std::io::Error> {
        Ok(self.lock().live.len() as u64)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), std::io::Error> {
        let d = self.lock();
        let start = usize::try_from(offset).map_err(|_| io_error("offset"))?;
        let source = d
            .live
            .get(start..start + out.len())
            .ok_or_else(|| io_error("read past the end"))?;
        out.copy_from_slice(source);
        Ok(())
    }

    fn set_len(&self, len: u64) -> Result<(), std::io::Error> {
        let len = usize::try_from(len).map_err(|_| io_error("len"))?;
        let mut d = self.lock();
        if d.capacity.is_some_and(|cap| len > cap) {
            return Err(no_space());
        }
        let change = Unsynced::SetLen(len);
        change.apply_to(&mut d.live);
        d.unsynced.push(change);
        Ok(())
    }

    fn sync_data(&self) -> Result<(), std::io::Error> {
        let mut d = self.lock();
        if d.hold {
            d.held += 1;
            while d.hold {
                d = self.disk.1.wait(d).unwrap();
            }
            d.held -= 1;
        }
        let changes = std::mem::take(&mut d.unsynced);
        for change in &changes {
            change.apply_to(&mut d.durable);
        }
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), std::io::Error> {
        let offset = usize::try_from(offset).map_err(|_| io_error("offset"))?;
        let mut d = self.lock();
        if d.capacity.is_some_and(|cap| offset + data.len() > cap) {
            return Err(no_space());
        }
        let change = Unsynced::Write {
            offset,
            data: data.to_vec(),
        };
        change.apply_to(&mut d.live);
        d.unsynced.push(change);
        Ok(())
    }
}
