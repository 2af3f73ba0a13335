//! What a subsystem reports to `/metrics`, as plain data: its table (each metric's name and
//! help) and its samples at one instant. Each subsystem keeps its table beside its counters (a
//! `metrics.rs` of its own); the host's telemetry only registers the tables with the exporter
//! and renders the samples. A name ending in `_total` is a counter, any other a gauge.

/// Every metric of a subsystem: name and help text.
pub type Table = &'static [(&'static str, &'static str)];

/// One series' value at one instant: metric name, labels, value.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// The metric's name, as in its table.
    pub name: &'static str,
    /// Label names and values (bounded sets: never a key).
    pub labels: Vec<(&'static str, String)>,
    /// The value.
    pub value: f64,
}

impl Sample {
    /// A sample of `name` without labels.
    pub fn new(name: &'static str, value: f64) -> Self {
        Sample {
            name,
            labels: Vec::new(),
            value,
        }
    }

    /// The same sample with one more label.
    #[must_use]
    pub fn with(mut self, label: &'static str, value: impl Into<String>) -> Self {
        self.labels.push((label, value.into()));
        self
    }

    /// The same sample with `label` when `value` is given.
    #[must_use]
    pub fn with_opt(self, label: &'static str, value: Option<&'static str>) -> Self {
        match value {
            Some(value) => self.with(label, value),
            None => self,
        }
    }
}
