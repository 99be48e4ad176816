//! Parsing stage: one framed request ADU in, plain data out (docs/engine.md section 2).
//!
//! The result says what the request touches (table, inclusive address ranges, read or write) and
//! what it writes; the policy stage matches on exactly that. Parsing allocates nothing: ranges of
//! file-record requests and written values are read lazily from the borrowed PDU, which the parser
//! has already validated in full.
//!
//! ```text
//!  ADU:  | tid:2 | pid:2 | len:2 | unit:1 | fc:1 | data ... |
//!                                          \------ PDU ------/
//! ```

use super::functions::{DiagnosticSub, FunctionCode, Malformed, MeiType, Table};
use super::{MAX_ADU_LEN, MBAP_LEN};

/// One inclusive address range a request touches.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Range {
    pub table: Table,
    pub start: u32,
    pub end: u32,
    pub write: bool,
}

impl Range {
    const NONE: Range = Range { table: Table::Coils, start: 0, end: 0, write: false };
}

/// One value a request writes. `value` is `None` when the request does not carry it (FC 22).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WrittenValue {
    pub table: Table,
    pub address: u32,
    pub value: Option<u16>,
}

/// Where the written values sit in the PDU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Values {
    None,
    Single {
        table: Table,
        address: u32,
        value: u16,
    },
    Unknown {
        table: Table,
        address: u32,
    },
    /// FC 15: `qty` bits from `data[5..]`, LSB of the first byte is `start`.
    Coils {
        start: u32,
        qty: u16,
    },
    /// FC 16 / FC 23: `qty` big-endian words from `data[offset..]`.
    Registers {
        start: u32,
        qty: u16,
        offset: u8,
    },
    /// FC 21: the record words of every sub-request.
    FileRecords,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum FileWalk {
    None,
    Read,
    Write,
}

/// A well-formed request (or one with a non-public function code, which `code` shows as `None`).
#[derive(Clone, Copy, Debug)]
pub struct Request<'a> {
    pub transaction_id: u16,
    pub unit: u8,
    /// The raw function code byte.
    pub function: u8,
    /// `None` for a function code zonegate does not parse; such a request touches nothing.
    pub code: Option<FunctionCode>,
    /// FC 8 sub-function or FC 43 MEI type; part of the function key.
    pub sub: Option<u16>,
    /// Largest number of addresses in any one range touched (FC 20/21: largest record length).
    pub quantity: u32,
    fixed: [Range; 2],
    n_fixed: u8,
    file: FileWalk,
    values: Values,
    /// The PDU after the function code.
    data: &'a [u8],
}

/// A framed request that is not well formed, with whatever header fields could be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestError {
    pub kind: Malformed,
    pub transaction_id: u16,
    pub unit: u8,
    /// The raw function code byte, 0 when the frame is too short to hold one.
    pub function: u8,
    pub sub: Option<u16>,
}

#[inline(always)]
fn be16(b: &[u8], i: usize) -> u16 {
    u16::from_be_bytes([b[i], b[i + 1]])
}

/// "len(data) must be n": shorter is truncated, longer has trailing bytes.
#[inline(always)]
fn exact(data: &[u8], n: usize) -> Result<(), Malformed> {
    if data.len() < n {
        Err(Malformed::Truncated)
    } else if data.len() > n {
        Err(Malformed::TrailingBytes)
    } else {
        Ok(())
    }
}

#[inline(always)]
fn at_least(data: &[u8], n: usize) -> Result<(), Malformed> {
    if data.len() < n {
        Err(Malformed::Truncated)
    } else {
        Ok(())
    }
}

#[inline(always)]
fn span(start: u16, qty: u16) -> Result<(u32, u32), Malformed> {
    let start = start as u32;
    let qty = qty as u32;
    if start + qty > 0x1_0000 {
        Err(Malformed::AddressOverflow)
    } else {
        Ok((start, start + qty - 1))
    }
}

/// Checks shared by FC 20 and FC 21 sub-requests: returns (first address, last address).
#[inline(always)]
fn file_record(sub: &[u8]) -> Result<(u32, u32, u16), Malformed> {
    if sub[0] != 6 {
        return Err(Malformed::BadReferenceType);
    }
    let file = be16(sub, 1) as u32;
    let record = be16(sub, 3) as u32;
    let length = be16(sub, 5);
    if file == 0 || record > 9999 || length == 0 || record + length as u32 > 10_000 {
        return Err(Malformed::BadRecord);
    }
    let base = file << 16;
    Ok((base | record, base | (record + length as u32 - 1), length))
}

impl<'a> Request<'a> {
    fn new(tid: u16, unit: u8, function: u8, code: Option<FunctionCode>, data: &'a [u8]) -> Self {
        Request {
            transaction_id: tid,
            unit,
            function,
            code,
            sub: None,
            quantity: 0,
            fixed: [Range::NONE; 2],
            n_fixed: 0,
            file: FileWalk::None,
            values: Values::None,
            data,
        }
    }

    #[inline(always)]
    fn touch(&mut self, table: Table, start: u32, end: u32, write: bool) {
        self.fixed[self.n_fixed as usize] = Range { table, start, end, write };
        self.n_fixed += 1;
        let n = end - start + 1;
        if n > self.quantity {
            self.quantity = n;
        }
    }

    /// The function key `(fc, sub)` policies match on.
    #[inline]
    pub fn function_key(&self) -> (u8, Option<u16>) {
        (self.function, self.sub)
    }

    /// Every range the request touches, in wire order.
    #[inline]
    pub fn ranges(&self) -> RangeIter<'a> {
        RangeIter {
            fixed: self.fixed,
            n_fixed: self.n_fixed,
            i: 0,
            file: self.file,
            body: if self.file == FileWalk::None { &[] } else { &self.data[1..] },
        }
    }

    /// Every value the request writes, in wire order.
    #[inline]
    pub fn values(&self) -> ValueIter<'a> {
        ValueIter { values: self.values, data: self.data, i: 0, pos: 1, rec_left: 0, rec_addr: 0 }
    }

    /// Consecutive holding-register writes (FC 16, FC 23): the first address and the big-endian
    /// words. Lets the decision stage check bounds without walking [`Request::values`].
    #[inline]
    pub fn register_writes(&self) -> Option<(u32, &'a [u8])> {
        match self.values {
            Values::Registers { start, qty, offset } => {
                let o = offset as usize;
                Some((start, &self.data[o..o + 2 * qty as usize]))
            }
            _ => None,
        }
    }

    /// True when the request writes anything.
    #[inline]
    pub fn is_write(&self) -> bool {
        self.ranges().any(|r| r.write)
    }
}

/// Ranges of a request; file-record requests are walked from the PDU.
pub struct RangeIter<'a> {
    fixed: [Range; 2],
    n_fixed: u8,
    i: u8,
    file: FileWalk,
    body: &'a [u8],
}

impl Iterator for RangeIter<'_> {
    type Item = Range;

    #[inline]
    fn next(&mut self) -> Option<Range> {
        match self.file {
            FileWalk::None => {
                if self.i < self.n_fixed {
                    self.i += 1;
                    Some(self.fixed[self.i as usize - 1])
                } else {
                    None
                }
            }
            walk => {
                if self.body.len() < 7 {
                    return None;
                }
                let file = (be16(self.body, 1) as u32) << 16;
                let record = be16(self.body, 3) as u32;
                let length = be16(self.body, 5) as u32;
                let write = walk == FileWalk::Write;
                let step = if write { 7 + 2 * length as usize } else { 7 };
                self.body = &self.body[step.min(self.body.len())..];
                Some(Range {
                    table: Table::FileRecords,
                    start: file | record,
                    end: file | (record + length - 1),
                    write,
                })
            }
        }
    }
}

/// Written values of a request, read from the PDU.
pub struct ValueIter<'a> {
    values: Values,
    data: &'a [u8],
    i: u32,
    /// FC 21: position of the next unread byte in `data`.
    pos: usize,
    rec_left: u32,
    rec_addr: u32,
}

impl Iterator for ValueIter<'_> {
    type Item = WrittenValue;

    #[inline]
    fn next(&mut self) -> Option<WrittenValue> {
        match self.values {
            Values::None => None,
            Values::Single { table, address, value } => {
                self.values = Values::None;
                Some(WrittenValue { table, address, value: Some(value) })
            }
            Values::Unknown { table, address } => {
                self.values = Values::None;
                Some(WrittenValue { table, address, value: None })
            }
            Values::Coils { start, qty } => {
                if self.i >= qty as u32 {
                    return None;
                }
                let i = self.i;
                self.i += 1;
                let bit = (self.data[5 + (i / 8) as usize] >> (i % 8)) & 1;
                Some(WrittenValue { table: Table::Coils, address: start + i, value: Some(bit as u16) })
            }
            Values::Registers { start, qty, offset } => {
                if self.i >= qty as u32 {
                    return None;
                }
                let i = self.i;
                self.i += 1;
                let v = be16(self.data, offset as usize + 2 * i as usize);
                Some(WrittenValue { table: Table::HoldingRegisters, address: start + i, value: Some(v) })
            }
            Values::FileRecords => {
                while self.rec_left == 0 {
                    if self.pos + 7 > self.data.len() {
                        return None;
                    }
                    let sub = &self.data[self.pos..];
                    self.rec_addr = ((be16(sub, 1) as u32) << 16) | be16(sub, 3) as u32;
                    self.rec_left = be16(sub, 5) as u32;
                    self.pos += 7;
                }
                let v = be16(self.data, self.pos);
                self.pos += 2;
                self.rec_left -= 1;
                let address = self.rec_addr;
                self.rec_addr += 1;
                Some(WrittenValue { table: Table::FileRecords, address, value: Some(v) })
            }
        }
    }
}

/// Parses one request ADU.
///
/// `frame` should be exactly one ADU as the splitter delivered it. A frame that is not (shorter
/// than 8 bytes, protocol id not 0, or a length field that disagrees with the frame) is refused:
/// `truncated` when it holds fewer bytes than its header declares (or is too short to hold a
/// function code, or carries a non-zero protocol id), `trailing_bytes` when it holds more (or more
/// than the largest ADU). A function code zonegate does not parse comes back as a `Request` with
/// `code == None`; it is never malformed.
pub fn parse_request(frame: &[u8]) -> Result<Request<'_>, RequestError> {
    let tid = if frame.len() >= 2 { be16(frame, 0) } else { 0 };
    let unit = if frame.len() >= MBAP_LEN { frame[6] } else { 0 };
    let function = if frame.len() > MBAP_LEN { frame[7] } else { 0 };
    let err = |kind: Malformed, sub: Option<u16>| RequestError { kind, transaction_id: tid, unit, function, sub };
    if frame.len() <= MBAP_LEN || frame[2] != 0 || frame[3] != 0 {
        return Err(err(Malformed::Truncated, None));
    }
    let declared = 6 + be16(frame, 4) as usize;
    if declared > frame.len() {
        return Err(err(Malformed::Truncated, None));
    }
    if declared < frame.len() || declared > MAX_ADU_LEN {
        return Err(err(Malformed::TrailingBytes, None));
    }
    let data = &frame[MBAP_LEN + 1..];
    let Some(code) = FunctionCode::from_u8(function) else {
        return Ok(Request::new(tid, unit, function, None, data));
    };
    let mut req = Request::new(tid, unit, function, Some(code), data);
    match parse_pdu(&mut req, code, data) {
        Ok(()) => Ok(req),
        Err(kind) => Err(err(kind, req.sub)),
    }
}

fn parse_pdu(req: &mut Request<'_>, code: FunctionCode, data: &[u8]) -> Result<(), Malformed> {
    use FunctionCode as F;
    match code {
        F::ReadCoils | F::ReadDiscreteInputs | F::ReadHoldingRegisters | F::ReadInputRegisters => {
            exact(data, 4)?;
            let (table, max) = match code {
                F::ReadCoils => (Table::Coils, 2000),
                F::ReadDiscreteInputs => (Table::DiscreteInputs, 2000),
                F::ReadHoldingRegisters => (Table::HoldingRegisters, 125),
                _ => (Table::InputRegisters, 125),
            };
            let qty = be16(data, 2);
            if qty == 0 || qty > max {
                return Err(Malformed::BadQuantity);
            }
            let (s, e) = span(be16(data, 0), qty)?;
            req.touch(table, s, e, false);
        }
        F::WriteSingleCoil => {
            exact(data, 4)?;
            let a = be16(data, 0) as u32;
            let value = match be16(data, 2) {
                0x0000 => 0,
                0xFF00 => 1,
                _ => return Err(Malformed::BadCoilValue),
            };
            req.touch(Table::Coils, a, a, true);
            req.values = Values::Single { table: Table::Coils, address: a, value };
        }
        F::WriteSingleRegister => {
            exact(data, 4)?;
            let a = be16(data, 0) as u32;
            req.touch(Table::HoldingRegisters, a, a, true);
            req.values = Values::Single { table: Table::HoldingRegisters, address: a, value: be16(data, 2) };
        }
        F::ReadExceptionStatus | F::GetCommEventCounter | F::GetCommEventLog | F::ReportServerId => {
            exact(data, 0)?;
        }
        F::Diagnostics => {
            at_least(data, 2)?;
            let sub = be16(data, 0);
            req.sub = Some(sub);
            match DiagnosticSub::from_u16(sub) {
                None => return Err(Malformed::BadSubfunction),
                Some(DiagnosticSub::ReturnQueryData) => {
                    if !(data.len() - 2).is_multiple_of(2) {
                        return Err(Malformed::TrailingBytes);
                    }
                }
                Some(_) => exact(data, 4)?,
            }
        }
        F::WriteMultipleCoils => {
            at_least(data, 5)?;
            let qty = be16(data, 2);
            if qty == 0 || qty > 1968 {
                return Err(Malformed::BadQuantity);
            }
            let (s, e) = span(be16(data, 0), qty)?;
            let bc = data[4] as usize;
            if bc != (qty as usize).div_ceil(8) {
                return Err(Malformed::BadByteCount);
            }
            exact(data, 5 + bc)?;
            req.touch(Table::Coils, s, e, true);
            req.values = Values::Coils { start: s, qty };
        }
        F::WriteMultipleRegisters => {
            at_least(data, 5)?;
            let qty = be16(data, 2);
            if qty == 0 || qty > 123 {
                return Err(Malformed::BadQuantity);
            }
            let (s, e) = span(be16(data, 0), qty)?;
            let bc = data[4] as usize;
            if bc != 2 * qty as usize {
                return Err(Malformed::BadByteCount);
            }
            exact(data, 5 + bc)?;
            req.touch(Table::HoldingRegisters, s, e, true);
            req.values = Values::Registers { start: s, qty, offset: 5 };
        }
        F::ReadFileRecord => {
            at_least(data, 1)?;
            let bc = data[0] as usize;
            if !(7..=245).contains(&bc) || !bc.is_multiple_of(7) {
                return Err(Malformed::BadByteCount);
            }
            exact(data, 1 + bc)?;
            for sub in data[1..].chunks_exact(7) {
                let (_, _, length) = file_record(sub)?;
                req.quantity = req.quantity.max(length as u32);
            }
            req.file = FileWalk::Read;
        }
        F::WriteFileRecord => {
            at_least(data, 1)?;
            let bc = data[0] as usize;
            if !(9..=251).contains(&bc) {
                return Err(Malformed::BadByteCount);
            }
            exact(data, 1 + bc)?;
            let mut rest = &data[1..];
            while !rest.is_empty() {
                if rest.len() < 7 {
                    return Err(Malformed::BadByteCount);
                }
                let (_, _, length) = file_record(rest)?;
                let words = 2 * length as usize;
                if words > rest.len() - 7 {
                    return Err(Malformed::BadByteCount);
                }
                req.quantity = req.quantity.max(length as u32);
                rest = &rest[7 + words..];
            }
            req.file = FileWalk::Write;
            req.values = Values::FileRecords;
        }
        F::MaskWriteRegister => {
            exact(data, 6)?;
            let a = be16(data, 0) as u32;
            req.touch(Table::HoldingRegisters, a, a, true);
            req.values = Values::Unknown { table: Table::HoldingRegisters, address: a };
        }
        F::ReadWriteMultipleRegisters => {
            at_least(data, 9)?;
            let rq = be16(data, 2);
            if rq == 0 || rq > 125 {
                return Err(Malformed::BadQuantity);
            }
            let (rs, re) = span(be16(data, 0), rq)?;
            let wq = be16(data, 6);
            if wq == 0 || wq > 121 {
                return Err(Malformed::BadQuantity);
            }
            let (ws, we) = span(be16(data, 4), wq)?;
            let bc = data[8] as usize;
            if bc != 2 * wq as usize {
                return Err(Malformed::BadByteCount);
            }
            exact(data, 9 + bc)?;
            req.touch(Table::HoldingRegisters, rs, re, false);
            req.touch(Table::HoldingRegisters, ws, we, true);
            req.values = Values::Registers { start: ws, qty: wq, offset: 9 };
        }
        F::ReadFifoQueue => {
            exact(data, 2)?;
            let a = be16(data, 0) as u32;
            req.touch(Table::HoldingRegisters, a, a, false);
        }
        F::EncapsulatedInterfaceTransport => {
            at_least(data, 1)?;
            req.sub = Some(data[0] as u16);
            match MeiType::from_u8(data[0]) {
                None => return Err(Malformed::BadMeiType),
                Some(MeiType::ReadDeviceIdentification) => {
                    exact(data, 3)?;
                    if !(1..=4).contains(&data[1]) {
                        return Err(Malformed::BadDeviceIdCode);
                    }
                }
                Some(MeiType::CanopenGeneralReference) => {}
            }
        }
    }
    Ok(())
}
