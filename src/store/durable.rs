//! Durable Streams documents in the store, each under its namespace's prefix: one JSON document
//! per stream path (`ds/<path>`), per subscription (`dss/<id>`), and the webhook signing key
//! (`dsk/<name>`), so a restarted server knows its streams and subscriptions; stream records are
//! read back from their topics.
//!
//! This module stores opaque documents; `edge::durable` decides what they hold.

use rocksdb::WriteOptions;

use super::{Error, Store};

/// Which kind of document.
#[derive(Clone, Copy, Debug)]
pub enum DurableDoc {
    /// A stream's metadata, by path.
    Stream,
    /// A subscription, by id.
    Subscription,
    /// A signing key, by name.
    Key,
}

impl DurableDoc {
    fn prefix(self) -> &'static str {
        match self {
            DurableDoc::Stream => "ds/",
            DurableDoc::Subscription => "dss/",
            DurableDoc::Key => "dsk/",
        }
    }
}

impl Store {
    /// Saves a document; `sync` for the changes clients are told about at once (creation,
    /// close, deletion), unsynced for appends (the log has them too).
    pub async fn durable_put(
        &self,
        kind: DurableDoc,
        name: &str,
        doc: Vec<u8>,
        sync: bool,
    ) -> Result<(), Error> {
        let key = format!("{}{name}", kind.prefix());
        self.blocking(move |db| {
            let mut wo = WriteOptions::default();
            wo.set_sync(sync);
            db.put_opt(key, doc, &wo)?;
            Ok(())
        })
        .await
    }

    /// Forgets a document.
    pub async fn durable_delete(&self, kind: DurableDoc, name: &str) -> Result<(), Error> {
        let key = format!("{}{name}", kind.prefix());
        self.blocking(move |db| {
            let mut wo = WriteOptions::default();
            wo.set_sync(true);
            db.delete_opt(key, &wo)?;
            Ok(())
        })
        .await
    }

    /// Every document of a kind, by name.
    pub async fn durable_all(&self, kind: DurableDoc) -> Result<Vec<(String, Vec<u8>)>, Error> {
        let prefix = kind.prefix();
        self.blocking(move |db| {
            let mut out = Vec::new();
            for item in db.prefix_iterator(prefix.as_bytes()) {
                let (k, v) = item?;
                let Some(name) = k.strip_prefix(prefix.as_bytes()) else {
                    break;
                };
                out.push((String::from_utf8_lossy(name).into_owned(), v.to_vec()));
            }
            Ok(out)
        })
        .await
    }
}
