//! What the metric list in `stats.rs` expands to, and the walks over it: copying the samples
//! out and in (publishing, summing) and writing Prometheus text.

use super::{visit, Counters, Family, Histogram, FIELDS};
use crate::core::relay::CloseReason;
use std::borrow::Cow;
use std::fmt::Write as _;

/// A label name and its value, as the text shows them.
pub(super) type LabelPair<'a> = (&'static str, &'a dyn Label);

/// A label value.
pub(super) trait Label {
    fn text(&self) -> Cow<'static, str>;
}

impl Label for u16 {
    fn text(&self) -> Cow<'static, str> {
        Cow::Owned(self.to_string())
    }
}

impl Label for &'static str {
    fn text(&self) -> Cow<'static, str> {
        Cow::Borrowed(self)
    }
}

impl Label for CloseReason {
    fn text(&self) -> Cow<'static, str> {
        Cow::Borrowed(self.as_str())
    }
}

/// Where one sample lives: a plain integer of the owning worker.
pub(super) trait Slot {
    fn get(&self) -> u64;
    fn set(&mut self, v: u64);
}

impl Slot for u64 {
    fn get(&self) -> u64 {
        *self
    }
    fn set(&mut self, v: u64) {
        *self = v;
    }
}

impl Slot for usize {
    fn get(&self) -> u64 {
        *self as u64
    }
    fn set(&mut self, v: u64) {
        *self = v as usize;
    }
}

/// Something that walks every sample of [`Counters`] in list order (the generated `visit`).
pub(super) trait Visit {
    /// One sample of family `f`, with its label if the family has one.
    fn sample(&mut self, f: &Family, label: Option<LabelPair<'_>>, slot: &mut impl Slot);
    /// A histogram over `bounds`: its `N` bucket counts and its sum, `N + 1` slots.
    fn histogram<const N: usize>(&mut self, f: &Family, bounds: &[f64], h: &mut Histogram<N>);
}

/// Copies the samples out, in slot order.
struct Flatten {
    out: [u64; FIELDS],
    at: usize,
}

impl Visit for Flatten {
    fn sample(&mut self, _: &Family, _: Option<LabelPair<'_>>, slot: &mut impl Slot) {
        self.out[self.at] = slot.get();
        self.at += 1;
    }
    fn histogram<const N: usize>(&mut self, _: &Family, _: &[f64], h: &mut Histogram<N>) {
        self.out[self.at..self.at + N].copy_from_slice(&h.counts);
        self.out[self.at + N] = h.sum_us;
        self.at += N + 1;
    }
}

/// Copies the samples in, in slot order.
struct Unflatten<'a> {
    from: &'a [u64; FIELDS],
    at: usize,
}

impl Visit for Unflatten<'_> {
    fn sample(&mut self, _: &Family, _: Option<LabelPair<'_>>, slot: &mut impl Slot) {
        slot.set(self.from[self.at]);
        self.at += 1;
    }
    fn histogram<const N: usize>(&mut self, _: &Family, _: &[f64], h: &mut Histogram<N>) {
        h.counts.copy_from_slice(&self.from[self.at..self.at + N]);
        h.sum_us = self.from[self.at + N];
        self.at += N + 1;
    }
}

pub(super) fn flatten(c: &Counters) -> [u64; FIELDS] {
    let mut f = Flatten {
        out: [0; FIELDS],
        at: 0,
    };
    let mut c = *c;
    visit(&mut c, &mut f);
    f.out
}

pub(super) fn unflatten(v: &[u64; FIELDS]) -> Counters {
    let mut c = Counters::default();
    visit(&mut c, &mut Unflatten { from: v, at: 0 });
    c
}

/// Prometheus text: `# HELP` and `# TYPE` once before each family's first sample.
#[derive(Default)]
pub(super) struct Text {
    pub(super) out: String,
    /// The family of the previous line.
    pub(super) last: &'static str,
}

impl Text {
    pub(super) fn line(
        &mut self,
        f: &Family,
        suffix: &str,
        label: Option<(&str, &str)>,
        v: impl std::fmt::Display,
    ) {
        if self.last != f.name {
            self.last = f.name;
            // HELP text escapes only `\` and newlines; ours have neither, but stay valid if
            // someone writes one.
            let help = f.help.trim().replace('\\', "\\\\").replace('\n', "\\n");
            let _ = writeln!(self.out, "# HELP {} {help}", f.name);
            let _ = writeln!(self.out, "# TYPE {} {}", f.name, f.kind.as_str());
        }
        let _ = match label {
            // Label values here are our own words, numbers and socket addresses: nothing to
            // escape.
            Some((k, val)) => writeln!(self.out, "{}{suffix}{{{k}=\"{val}\"}} {v}", f.name),
            None => writeln!(self.out, "{}{suffix} {v}", f.name),
        };
    }
}

impl Visit for Text {
    fn sample(&mut self, f: &Family, label: Option<LabelPair<'_>>, slot: &mut impl Slot) {
        let label = label.map(|(k, v)| (k, v.text()));
        let label = label.as_ref().map(|(k, v)| (*k, v.as_ref()));
        self.line(f, "", label, slot.get());
    }

    fn histogram<const N: usize>(&mut self, f: &Family, bounds: &[f64], h: &mut Histogram<N>) {
        let mut cumulative = 0;
        for (i, n) in h.counts.iter().enumerate() {
            cumulative += n;
            let le = bounds
                .get(i)
                .map_or_else(|| "+Inf".to_string(), f64::to_string);
            self.line(f, "_bucket", Some(("le", &le)), cumulative);
        }
        self.line(
            f,
            "_sum",
            None,
            format_args!("{:.6}", h.sum_us as f64 / 1e6),
        );
        self.line(f, "_count", None, cumulative);
    }
}

/// Expands the list: [`Counters`], `FIELDS` (the slot count of [`Published`]) and `visit`.
macro_rules! metrics {
    ($(
        $(#[doc = $help:literal])+
        $field:ident $(: $ty:ty)? = $spec:tt;
    )*) => {
        /// One worker's counters, owned by its thread: a field per entry of the metric list.
        #[derive(Debug, Default, Clone, Copy)]
        pub struct Counters {
            $( $(#[doc = $help])+ pub $field: metric_type!($($ty)? ; $spec), )*
        }

        /// Slots in [`Published`]: one per sample, a histogram's buckets and sum one each.
        const FIELDS: usize = 0 $( + metric_slots!($spec) )*;

        /// Walks every sample of `c`, in list order.
        fn visit(c: &mut Counters, v: &mut impl Visit) {
            $( metric_visit!(v, c.$field, concat!($($help),+), $spec); )*
        }
    };
}
pub(super) use metrics;

/// The field type of one entry.
macro_rules! metric_type {
    (; (histogram $name:literal $bounds:expr)) => {
        Histogram<{ $bounds.len() + 1 }>
    };
    (; ($kind:ident $name:literal by $label:ident in $values:expr)) => {
        [u64; $values.len()]
    };
    (; ($kind:ident $name:literal $(json $json:literal)? $({$l:ident = $lv:literal})?)) => {
        u64
    };
    ($ty:ty ; $spec:tt) => {
        $ty
    };
}
pub(super) use metric_type;

/// The slot count of one entry.
macro_rules! metric_slots {
    ((histogram $name:literal $bounds:expr)) => {
        $bounds.len() + 2
    };
    (($kind:ident $name:literal by $label:ident in $values:expr)) => {
        $values.len()
    };
    (($kind:ident $name:literal $(json $json:literal)? $({$l:ident = $lv:literal})?)) => {
        1
    };
    ({ $( $(#[doc = $help:literal])+ $sub:ident = $spec:tt; )* }) => {
        0 $( + metric_slots!($spec) )*
    };
}
pub(super) use metric_slots;

/// Visits one entry stored at `$place`.
macro_rules! metric_visit {
    ($v:ident, $place:expr, $help:expr, (histogram $name:literal $bounds:expr)) => {
        $v.histogram(
            &Family::new(Kind::Histogram, $name, $help),
            &$bounds,
            &mut $place,
        )
    };
    ($v:ident, $place:expr, $help:expr, ($kind:ident $name:literal by $label:ident in $values:expr)) => {
        for (value, slot) in $values.iter().zip($place.iter_mut()) {
            let label: LabelPair<'_> = (stringify!($label), value);
            $v.sample(&Family::new(metric_kind!($kind), $name, $help), Some(label), slot);
        }
    };
    ($v:ident, $place:expr, $help:expr, ($kind:ident $name:literal $(json $json:literal)? $({$l:ident = $lv:literal})?)) => {{
        let family = Family::new(metric_kind!($kind), $name, $help);
        $( let family = family.json($json); )?
        $v.sample(&family, metric_label!($($l = $lv)?), &mut $place);
    }};
    ($v:ident, $place:expr, $help:expr, { $( $(#[doc = $h:literal])+ $sub:ident = $spec:tt; )* }) => {
        $( metric_visit!($v, $place.$sub, concat!($($h),+), $spec); )*
    };
}
pub(super) use metric_visit;

/// A fixed label, if the entry has one.
macro_rules! metric_label {
    () => {
        None
    };
    ($l:ident = $lv:literal) => {
        Some((stringify!($l), &$lv as &dyn Label))
    };
}
pub(super) use metric_label;

macro_rules! metric_kind {
    (counter) => {
        Kind::Counter
    };
    (gauge) => {
        Kind::Gauge
    };
}
pub(super) use metric_kind;
