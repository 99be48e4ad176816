//! Policy IR: the JSON document the policy loader emits and the engine compiles
//! (docs/engine.md section 3). These structs only describe its shape; `compile` validates it.
//!
//! Numbers are read wide (i64/u64) so that an out-of-range value gets a message naming its field
//! instead of a bare deserialisation error.

use serde::Deserialize;

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Denials are answered with the protocol's refusal.
    Enforce,
    /// Denials are counted and logged as `would_deny`, and the request is forwarded.
    Monitor,
}

impl Mode {
    pub const fn name(self) -> &'static str {
        match self {
            Mode::Enforce => "enforce",
            Mode::Monitor => "monitor",
        }
    }
}

#[derive(Clone, Debug, Deserialize)]
pub struct Ir {
    pub version: i64,
    pub mode: Mode,
    pub principals: Vec<Principal>,
    pub devices: Vec<Device>,
    pub rules: Vec<Rule>,
}

/// Identity of a principal; the conduits resolve it, the engine only needs the name and index.
#[derive(Clone, Debug, Deserialize)]
pub struct Principal {
    pub name: String,
    #[serde(default)]
    pub tls_roles: Vec<String>,
    #[serde(default)]
    pub subjects: Vec<String>,
    #[serde(default)]
    pub opcua_users: Vec<String>,
    #[serde(default)]
    pub sources: Vec<String>,
}

#[derive(Clone, Debug, Deserialize)]
pub struct Device {
    pub name: String,
    #[serde(default)]
    pub zone: String,
    #[serde(default)]
    pub host: String,
    #[serde(default)]
    pub port: i64,
    /// Inclusive unit id ranges; `None` means any unit.
    pub units: Option<Vec<[i64; 2]>>,
    /// EtherNet/IP endpoint, when the device speaks it (the engine does not use it).
    #[serde(default)]
    pub enip: Option<super::cip::EnipDevice>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    pub id: String,
    /// Indices into `Ir::principals`.
    pub principals: Vec<i64>,
    /// Indices into `Ir::devices`.
    pub devices: Vec<i64>,
    /// Inclusive unit id ranges; `None` means the units of the device the request is for.
    pub units: Option<Vec<[i64; 2]>>,
    pub allow: Vec<Entry>,
    /// CIP entries (docs/cip-engine.md section 2); a rule may have `allow`, `cip` or both.
    #[serde(default)]
    pub cip: Vec<super::cip::CipEntry>,
}

#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// Function keys `(fc, sub)`; `sub` is the FC 8 sub-function or FC 43 MEI type.
    pub functions: Vec<(i64, Option<i64>)>,
    pub ranges: Ranges,
    pub max_quantity: Option<i64>,
    pub rate: Option<Rate>,
}

#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ranges {
    #[serde(default)]
    pub coils: Vec<AddressRange>,
    #[serde(default)]
    pub discrete_inputs: Vec<AddressRange>,
    #[serde(default)]
    pub input_registers: Vec<AddressRange>,
    #[serde(default)]
    pub holding_registers: Vec<AddressRange>,
    #[serde(default)]
    pub file_records: Vec<AddressRange>,
}

impl Ranges {
    /// The ranges of each table, in `Table` code order.
    pub fn by_table(&self) -> [&[AddressRange]; 5] {
        [&self.coils, &self.discrete_inputs, &self.input_registers, &self.holding_registers, &self.file_records]
    }
}

/// Inclusive address range with optional write-value bounds.
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AddressRange {
    pub start: i64,
    pub end: i64,
    #[serde(default)]
    pub min: Option<i64>,
    #[serde(default)]
    pub max: Option<i64>,
    #[serde(default)]
    pub signed: bool,
}

/// Token bucket: `count` requests per `period_ns`, up to `burst` at once.
#[derive(Clone, Copy, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rate {
    pub count: u64,
    pub period_ns: u64,
    pub burst: u64,
}
