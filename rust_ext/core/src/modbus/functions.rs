//! Wire vocabulary shared by the framing and parsing stage: function codes, tables, malformed
//! kinds and exception codes, each carrying the value the specification (or the binding) gives it.

/// Public Modbus function codes that zonegate parses (Modbus Application Protocol v1.1b3, 6.x).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FunctionCode {
    ReadCoils = 0x01,
    ReadDiscreteInputs = 0x02,
    ReadHoldingRegisters = 0x03,
    ReadInputRegisters = 0x04,
    WriteSingleCoil = 0x05,
    WriteSingleRegister = 0x06,
    ReadExceptionStatus = 0x07,
    Diagnostics = 0x08,
    GetCommEventCounter = 0x0B,
    GetCommEventLog = 0x0C,
    WriteMultipleCoils = 0x0F,
    WriteMultipleRegisters = 0x10,
    ReportServerId = 0x11,
    ReadFileRecord = 0x14,
    WriteFileRecord = 0x15,
    MaskWriteRegister = 0x16,
    ReadWriteMultipleRegisters = 0x17,
    ReadFifoQueue = 0x18,
    EncapsulatedInterfaceTransport = 0x2B,
}

impl FunctionCode {
    /// The public function code for a wire byte, or `None` for every code zonegate does not parse
    /// (reserved, user-defined, and exception replies with the high bit set).
    #[inline]
    pub const fn from_u8(fc: u8) -> Option<Self> {
        Some(match fc {
            0x01 => Self::ReadCoils,
            0x02 => Self::ReadDiscreteInputs,
            0x03 => Self::ReadHoldingRegisters,
            0x04 => Self::ReadInputRegisters,
            0x05 => Self::WriteSingleCoil,
            0x06 => Self::WriteSingleRegister,
            0x07 => Self::ReadExceptionStatus,
            0x08 => Self::Diagnostics,
            0x0B => Self::GetCommEventCounter,
            0x0C => Self::GetCommEventLog,
            0x0F => Self::WriteMultipleCoils,
            0x10 => Self::WriteMultipleRegisters,
            0x11 => Self::ReportServerId,
            0x14 => Self::ReadFileRecord,
            0x15 => Self::WriteFileRecord,
            0x16 => Self::MaskWriteRegister,
            0x17 => Self::ReadWriteMultipleRegisters,
            0x18 => Self::ReadFifoQueue,
            0x2B => Self::EncapsulatedInterfaceTransport,
            _ => return None,
        })
    }

    /// The snake_case name used by policies, metrics and audit records.
    pub const fn name(self) -> &'static str {
        match self {
            Self::ReadCoils => "read_coils",
            Self::ReadDiscreteInputs => "read_discrete_inputs",
            Self::ReadHoldingRegisters => "read_holding_registers",
            Self::ReadInputRegisters => "read_input_registers",
            Self::WriteSingleCoil => "write_single_coil",
            Self::WriteSingleRegister => "write_single_register",
            Self::ReadExceptionStatus => "read_exception_status",
            Self::Diagnostics => "diagnostics",
            Self::GetCommEventCounter => "get_comm_event_counter",
            Self::GetCommEventLog => "get_comm_event_log",
            Self::WriteMultipleCoils => "write_multiple_coils",
            Self::WriteMultipleRegisters => "write_multiple_registers",
            Self::ReportServerId => "report_server_id",
            Self::ReadFileRecord => "read_file_record",
            Self::WriteFileRecord => "write_file_record",
            Self::MaskWriteRegister => "mask_write_register",
            Self::ReadWriteMultipleRegisters => "read_write_multiple_registers",
            Self::ReadFifoQueue => "read_fifo_queue",
            Self::EncapsulatedInterfaceTransport => "encapsulated_interface_transport",
        }
    }
}

/// FC 8 sub-functions that a request may carry (serial-line-only 0x13 and reserved codes excluded).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u16)]
pub enum DiagnosticSub {
    ReturnQueryData = 0x00,
    RestartCommunicationsOption = 0x01,
    ReturnDiagnosticRegister = 0x02,
    ChangeAsciiInputDelimiter = 0x03,
    ForceListenOnlyMode = 0x04,
    ClearCountersAndDiagnosticRegister = 0x0A,
    ReturnBusMessageCount = 0x0B,
    ReturnBusCommunicationErrorCount = 0x0C,
    ReturnBusExceptionErrorCount = 0x0D,
    ReturnServerMessageCount = 0x0E,
    ReturnServerNoResponseCount = 0x0F,
    ReturnServerNakCount = 0x10,
    ReturnServerBusyCount = 0x11,
    ReturnBusCharacterOverrunCount = 0x12,
    ClearOverrunCounterAndFlag = 0x14,
}

impl DiagnosticSub {
    pub const fn from_u16(sub: u16) -> Option<Self> {
        Some(match sub {
            0x00 => Self::ReturnQueryData,
            0x01 => Self::RestartCommunicationsOption,
            0x02 => Self::ReturnDiagnosticRegister,
            0x03 => Self::ChangeAsciiInputDelimiter,
            0x04 => Self::ForceListenOnlyMode,
            0x0A => Self::ClearCountersAndDiagnosticRegister,
            0x0B => Self::ReturnBusMessageCount,
            0x0C => Self::ReturnBusCommunicationErrorCount,
            0x0D => Self::ReturnBusExceptionErrorCount,
            0x0E => Self::ReturnServerMessageCount,
            0x0F => Self::ReturnServerNoResponseCount,
            0x10 => Self::ReturnServerNakCount,
            0x11 => Self::ReturnServerBusyCount,
            0x12 => Self::ReturnBusCharacterOverrunCount,
            0x14 => Self::ClearOverrunCounterAndFlag,
            _ => return None,
        })
    }
}

/// FC 43 MEI types zonegate accepts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum MeiType {
    CanopenGeneralReference = 0x0D,
    ReadDeviceIdentification = 0x0E,
}

impl MeiType {
    pub const fn from_u8(mei: u8) -> Option<Self> {
        match mei {
            0x0D => Some(Self::CanopenGeneralReference),
            0x0E => Some(Self::ReadDeviceIdentification),
            _ => None,
        }
    }
}

/// The data tables a request can touch; values are the binding's table codes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Table {
    Coils = 0,
    DiscreteInputs = 1,
    InputRegisters = 2,
    HoldingRegisters = 3,
    /// FC 20/21 records; addresses are `file << 16 | record`.
    FileRecords = 4,
}

impl Table {
    pub const ALL: [Table; 5] =
        [Table::Coils, Table::DiscreteInputs, Table::InputRegisters, Table::HoldingRegisters, Table::FileRecords];

    pub const fn name(self) -> &'static str {
        match self {
            Self::Coils => "coils",
            Self::DiscreteInputs => "discrete_inputs",
            Self::InputRegisters => "input_registers",
            Self::HoldingRegisters => "holding_registers",
            Self::FileRecords => "file_records",
        }
    }

    /// Highest address of the table: 16-bit everywhere except file records (32-bit).
    pub const fn max_address(self) -> u32 {
        match self {
            Self::FileRecords => u32::MAX,
            _ => 0xFFFF,
        }
    }
}

/// Why a framed request is not a well-formed one; values are the binding's enum values.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum Malformed {
    /// Fewer bytes than the structure needs.
    Truncated = 1,
    /// More bytes than the structure holds.
    TrailingBytes = 2,
    /// A quantity outside the function's limits.
    BadQuantity = 3,
    /// A byte count that disagrees with the quantity or the bytes present.
    BadByteCount = 4,
    /// start + quantity beyond the 65536-address space.
    AddressOverflow = 5,
    /// FC 5 value other than 0x0000 / 0xFF00.
    BadCoilValue = 6,
    /// FC 8 sub-function zonegate does not accept.
    BadSubfunction = 7,
    /// FC 43 MEI type other than 13 / 14.
    BadMeiType = 8,
    /// FC 20/21 reference type other than 6.
    BadReferenceType = 9,
    /// FC 20/21 file number, record number or record length out of bounds.
    BadRecord = 10,
    /// FC 43/14 read device id code outside 1..=4.
    BadDeviceIdCode = 11,
}

impl Malformed {
    pub const fn name(self) -> &'static str {
        match self {
            Self::Truncated => "truncated",
            Self::TrailingBytes => "trailing_bytes",
            Self::BadQuantity => "bad_quantity",
            Self::BadByteCount => "bad_byte_count",
            Self::AddressOverflow => "address_overflow",
            Self::BadCoilValue => "bad_coil_value",
            Self::BadSubfunction => "bad_subfunction",
            Self::BadMeiType => "bad_mei_type",
            Self::BadReferenceType => "bad_reference_type",
            Self::BadRecord => "bad_record",
            Self::BadDeviceIdCode => "bad_device_id_code",
        }
    }
}

/// Modbus exception codes (the byte after `fc | 0x80` in an exception response).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ExceptionCode {
    /// 0x01: the function is not allowed (zonegate's answer to a policy denial, MBTSS R-31).
    IllegalFunction = 0x01,
    /// 0x02: the address is not allowed.
    IllegalDataAddress = 0x02,
    /// 0x03: the request is malformed.
    IllegalDataValue = 0x03,
    /// 0x04: the server failed while performing the action.
    ServerDeviceFailure = 0x04,
    /// 0x05: accepted, long-running.
    Acknowledge = 0x05,
    /// 0x06: busy; zonegate's answer to a rate limit.
    ServerDeviceBusy = 0x06,
    /// 0x08: memory parity error (file records).
    MemoryParityError = 0x08,
    /// 0x0A: no path to the device (upstream unreachable).
    GatewayPathUnavailable = 0x0A,
    /// 0x0B: the device did not answer in time.
    GatewayTargetDeviceFailedToRespond = 0x0B,
}
