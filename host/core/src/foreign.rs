//! The errors of the parts core reaches only through a seam (a plugin runtime, a peer
//! protocol), kept as those parts classify them: [`SeamError`] (a code, a status, a public
//! message) and [`Foreign`], one shared. A leaf: both [`crate::error`] and
//! [`crate::compression`] wrap a [`Foreign`], and neither imports the other for it.

use std::any::Any;
use std::fmt;
use std::sync::Arc;

/// An error of a part behind a seam, as that part classifies it.
pub trait SeamError: std::error::Error + Any + Send + Sync {
    /// A stable, machine-readable code for API clients.
    fn code(&self) -> &str;
    /// The HTTP status it is served with.
    fn status(&self) -> u16;
    /// What a remote caller may see (details that are the operator's stay in the log).
    fn public_message(&self) -> String;
}

/// A [`SeamError`], shared: cloning it is cheap, as a failed load reaches every waiter.
#[derive(Clone)]
pub struct Foreign(Arc<dyn SeamError>);

impl Foreign {
    /// Wraps `error`.
    pub fn new(error: impl SeamError) -> Self {
        Foreign(Arc::new(error))
    }

    /// The part's own error, when it is a `T`.
    pub fn downcast_ref<T: SeamError>(&self) -> Option<&T> {
        let any: &dyn Any = &*self.0;
        any.downcast_ref::<T>()
    }

    /// See [`SeamError::code`].
    pub fn code(&self) -> &str {
        self.0.code()
    }

    /// See [`SeamError::status`].
    pub fn status(&self) -> u16 {
        self.0.status()
    }

    /// See [`SeamError::public_message`].
    pub fn public_message(&self) -> String {
        self.0.public_message()
    }
}

impl fmt::Debug for Foreign {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for Foreign {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&*self.0, f)
    }
}

impl std::error::Error for Foreign {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}
