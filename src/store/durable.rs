//! Durable Streams metadata in the store: one JSON document per stream path (`ds/<path>`), so a
//! restarted server knows its streams; their records are read back from their topics.
//!
//! This module stores opaque documents; `edge::durable` decides what they hold.

use rocksdb::WriteOptions;

use super::{Error, Store};

const PREFIX: &str = "ds/";

impl Store {
    /// Saves a stream's document; `sync` for the changes clients are told about at once
    /// (creation, close, deletion), unsynced for appends (the log has them too).
    pub async fn durable_put(&self, path: &str, doc: Vec<u8>, sync: bool) -> Result<(), Error> {
        let key = format!("{PREFIX}{path}");
        self.blocking(move |db| {
            let mut wo = WriteOptions::default();
            wo.set_sync(sync);
            db.put_opt(key, doc, &wo)?;
            Ok(())
        })
        .await
    }

    /// Forgets a stream.
    pub async fn durable_delete(&self, path: &str) -> Result<(), Error> {
        let key = format!("{PREFIX}{path}");
        self.blocking(move |db| {
            let mut wo = WriteOptions::default();
            wo.set_sync(true);
            db.delete_opt(key, &wo)?;
            Ok(())
        })
        .await
    }

    /// Every stream's document, by path.
    pub async fn durable_all(&self) -> Result<Vec<(String, Vec<u8>)>, Error> {
        self.blocking(|db| {
            let mut out = Vec::new();
            for item in db.prefix_iterator(PREFIX.as_bytes()) {
                let (k, v) = item?;
                let Some(path) = k.strip_prefix(PREFIX.as_bytes()) else {
                    break;
                };
                out.push((String::from_utf8_lossy(path).into_owned(), v.to_vec()));
            }
            Ok(out)
        })
        .await
    }
}
