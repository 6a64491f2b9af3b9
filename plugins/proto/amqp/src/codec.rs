//! The AMQP 0.9.1 frames and the methods a consumer and a confirming publisher use, written
//! out by hand: `amq-protocol` (lapin's codec) depends on `amq-protocol-tcp` and `async-rs`,
//! which do not build for wasm32-wasip2. Field tables (headers, client properties) are
//! `amq-protocol-types`', which does.

use amq_protocol_types::FieldTable;
use amq_protocol_types::generation::gen_field_table;
use amq_protocol_types::parsing::parse_field_table;

pub const FRAME_METHOD: u8 = 1;
pub const FRAME_HEADER: u8 = 2;
pub const FRAME_BODY: u8 = 3;
pub const FRAME_HEARTBEAT: u8 = 8;
const FRAME_END: u8 = 0xCE;

/// A method, by what it carries (only the arguments used here).
#[derive(Debug, Clone, PartialEq)]
pub enum Method {
    Start {
        mechanisms: String,
    },
    StartOk {
        properties: FieldTable,
        response: Vec<u8>,
    },
    Tune {
        channel_max: u16,
        frame_max: u32,
        heartbeat: u16,
    },
    TuneOk {
        channel_max: u16,
        frame_max: u32,
        heartbeat: u16,
    },
    Open {
        vhost: String,
    },
    OpenOk,
    Close {
        code: u16,
        text: String,
    },
    CloseOk,
    ChannelOpen,
    ChannelOpenOk,
    ChannelClose {
        code: u16,
        text: String,
    },
    ChannelCloseOk,
    ExchangeDeclare {
        exchange: String,
        kind: String,
    },
    ExchangeDeclareOk,
    QueueDeclare {
        queue: String,
    },
    QueueDeclareOk,
    QueueBind {
        queue: String,
        exchange: String,
        routing_key: String,
    },
    QueueBindOk,
    Qos {
        prefetch: u16,
    },
    QosOk,
    Consume {
        queue: String,
        tag: String,
    },
    ConsumeOk,
    Deliver {
        delivery_tag: u64,
        redelivered: bool,
        exchange: String,
        routing_key: String,
    },
    Ack {
        delivery_tag: u64,
        multiple: bool,
    },
    Nack {
        delivery_tag: u64,
        multiple: bool,
    },
    Publish {
        exchange: String,
        routing_key: String,
        mandatory: bool,
    },
    Return {
        code: u16,
        text: String,
        exchange: String,
        routing_key: String,
    },
    Select,
    SelectOk,
    /// Any other (class, method).
    Other(u16, u16),
}

/// The message properties kept here (others are read past).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Properties {
    pub content_type: Option<String>,
    pub headers: Option<FieldTable>,
    pub delivery_mode: Option<u8>,
    pub message_id: Option<String>,
    pub timestamp: Option<u64>,
}

/// A frame read.
#[derive(Debug, Clone, PartialEq)]
pub enum Frame {
    Method(u16, Method),
    Header(u16, u64, Properties),
    Body(u16, Vec<u8>),
    Heartbeat,
}

fn short(out: &mut Vec<u8>, s: &str) {
    let bytes = &s.as_bytes()[..s.len().min(255)];
    out.push(bytes.len() as u8);
    out.extend_from_slice(bytes);
}

fn long(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(&(b.len() as u32).to_be_bytes());
    out.extend_from_slice(b);
}

fn table(out: &mut Vec<u8>, t: &FieldTable) {
    if let Ok((bytes, _)) = cookie_factory::r#gen(gen_field_table(t), Vec::new()) {
        out.extend_from_slice(&bytes);
    } else {
        out.extend_from_slice(&0u32.to_be_bytes());
    }
}

fn empty_table(out: &mut Vec<u8>) {
    out.extend_from_slice(&0u32.to_be_bytes());
}

fn ids(out: &mut Vec<u8>, class: u16, method: u16) {
    out.extend_from_slice(&class.to_be_bytes());
    out.extend_from_slice(&method.to_be_bytes());
}

/// A method frame's payload.
pub fn encode_method(m: &Method) -> Vec<u8> {
    let mut o = Vec::with_capacity(64);
    match m {
        Method::StartOk {
            properties,
            response,
        } => {
            ids(&mut o, 10, 11);
            table(&mut o, properties);
            short(&mut o, "PLAIN");
            long(&mut o, response);
            short(&mut o, "en_US");
        }
        Method::TuneOk {
            channel_max,
            frame_max,
            heartbeat,
        } => {
            ids(&mut o, 10, 31);
            o.extend_from_slice(&channel_max.to_be_bytes());
            o.extend_from_slice(&frame_max.to_be_bytes());
            o.extend_from_slice(&heartbeat.to_be_bytes());
        }
        Method::Open { vhost } => {
            ids(&mut o, 10, 40);
            short(&mut o, vhost);
            short(&mut o, "");
            o.push(0);
        }
        Method::CloseOk => ids(&mut o, 10, 51),
        Method::ChannelOpen => {
            ids(&mut o, 20, 10);
            short(&mut o, "");
        }
        Method::ChannelCloseOk => ids(&mut o, 20, 41),
        Method::ExchangeDeclare { exchange, kind } => {
            ids(&mut o, 40, 10);
            o.extend_from_slice(&0u16.to_be_bytes());
            short(&mut o, exchange);
            short(&mut o, kind);
            o.push(0b0000_0010); // durable
            empty_table(&mut o);
        }
        Method::QueueDeclare { queue } => {
            ids(&mut o, 50, 10);
            o.extend_from_slice(&0u16.to_be_bytes());
            short(&mut o, queue);
            o.push(0b0000_0010); // durable
            empty_table(&mut o);
        }
        Method::QueueBind {
            queue,
            exchange,
            routing_key,
        } => {
            ids(&mut o, 50, 20);
            o.extend_from_slice(&0u16.to_be_bytes());
            short(&mut o, queue);
            short(&mut o, exchange);
            short(&mut o, routing_key);
            o.push(0);
            empty_table(&mut o);
        }
        Method::Qos { prefetch } => {
            ids(&mut o, 60, 10);
            o.extend_from_slice(&0u32.to_be_bytes());
            o.extend_from_slice(&prefetch.to_be_bytes());
            o.push(0);
        }
        Method::Consume { queue, tag } => {
            ids(&mut o, 60, 20);
            o.extend_from_slice(&0u16.to_be_bytes());
            short(&mut o, queue);
            short(&mut o, tag);
            o.push(0); // no-local, no-ack, exclusive, no-wait: all off
            empty_table(&mut o);
        }
        Method::Publish {
            exchange,
            routing_key,
            mandatory,
        } => {
            ids(&mut o, 60, 40);
            o.extend_from_slice(&0u16.to_be_bytes());
            short(&mut o, exchange);
            short(&mut o, routing_key);
            o.push(u8::from(*mandatory));
        }
        Method::Ack {
            delivery_tag,
            multiple,
        } => {
            ids(&mut o, 60, 80);
            o.extend_from_slice(&delivery_tag.to_be_bytes());
            o.push(u8::from(*multiple));
        }
        Method::Select => {
            ids(&mut o, 85, 10);
            o.push(0);
        }
        // Only the broker sends the others.
        other => {
            let _ = other;
        }
    }
    o
}

/// Reads the arguments of a payload.
struct Reader<'a> {
    b: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], String> {
        let end = self
            .pos
            .checked_add(n)
            .filter(|e| *e <= self.b.len())
            .ok_or("a truncated frame")?;
        let s = &self.b[self.pos..end];
        self.pos = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, String> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, String> {
        let b = self.take(2)?;
        Ok(u16::from_be_bytes([b[0], b[1]]))
    }
    fn u32(&mut self) -> Result<u32, String> {
        let b = self.take(4)?;
        Ok(u32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }
    fn u64(&mut self) -> Result<u64, String> {
        let b = self.take(8)?;
        let mut a = [0u8; 8];
        a.copy_from_slice(b);
        Ok(u64::from_be_bytes(a))
    }
    fn short(&mut self) -> Result<String, String> {
        let n = self.u8()? as usize;
        Ok(String::from_utf8_lossy(self.take(n)?).into_owned())
    }
    fn long(&mut self) -> Result<Vec<u8>, String> {
        let n = self.u32()? as usize;
        Ok(self.take(n)?.to_vec())
    }
    fn table(&mut self) -> Result<FieldTable, String> {
        let rest = &self.b[self.pos..];
        let (left, t) =
            parse_field_table(rest).map_err(|e| format!("an unreadable field table: {e:?}"))?;
        self.pos += rest.len() - left.len();
        Ok(t)
    }
}

/// A method frame's payload, decoded.
pub fn decode_method(payload: &[u8]) -> Result<Method, String> {
    let mut r = Reader { b: payload, pos: 0 };
    let class = r.u16()?;
    let method = r.u16()?;
    Ok(match (class, method) {
        (10, 10) => {
            let _major = r.u8()?;
            let _minor = r.u8()?;
            let _props = r.table()?;
            Method::Start {
                mechanisms: String::from_utf8_lossy(&r.long()?).into_owned(),
            }
        }
        (10, 30) => Method::Tune {
            channel_max: r.u16()?,
            frame_max: r.u32()?,
            heartbeat: r.u16()?,
        },
        (10, 41) => Method::OpenOk,
        (10, 50) => Method::Close {
            code: r.u16()?,
            text: r.short()?,
        },
        (10, 51) => Method::CloseOk,
        (20, 11) => Method::ChannelOpenOk,
        (20, 40) => Method::ChannelClose {
            code: r.u16()?,
            text: r.short()?,
        },
        (20, 41) => Method::ChannelCloseOk,
        (40, 11) => Method::ExchangeDeclareOk,
        (50, 11) => Method::QueueDeclareOk,
        (50, 21) => Method::QueueBindOk,
        (60, 11) => Method::QosOk,
        (60, 21) => Method::ConsumeOk,
        (60, 50) => Method::Return {
            code: r.u16()?,
            text: r.short()?,
            exchange: r.short()?,
            routing_key: r.short()?,
        },
        (60, 60) => {
            let _tag = r.short()?;
            Method::Deliver {
                delivery_tag: r.u64()?,
                redelivered: r.u8()? & 1 == 1,
                exchange: r.short()?,
                routing_key: r.short()?,
            }
        }
        (60, 80) => Method::Ack {
            delivery_tag: r.u64()?,
            multiple: r.u8()? & 1 == 1,
        },
        (60, 120) => Method::Nack {
            delivery_tag: r.u64()?,
            multiple: r.u8()? & 1 == 1,
        },
        (85, 11) => Method::SelectOk,
        (c, m) => Method::Other(c, m),
    })
}

/// A content header frame's payload.
pub fn encode_header(body_size: u64, p: &Properties) -> Vec<u8> {
    let mut o = Vec::with_capacity(64);
    ids(&mut o, 60, 0); // class, weight
    o.extend_from_slice(&body_size.to_be_bytes());
    let mut flags = 0u16;
    let mut fields = Vec::new();
    if let Some(ct) = &p.content_type {
        flags |= 1 << 15;
        short(&mut fields, ct);
    }
    if let Some(h) = &p.headers {
        flags |= 1 << 13;
        table(&mut fields, h);
    }
    if let Some(mode) = p.delivery_mode {
        flags |= 1 << 12;
        fields.push(mode);
    }
    if let Some(id) = &p.message_id {
        flags |= 1 << 7;
        short(&mut fields, id);
    }
    if let Some(ts) = p.timestamp {
        flags |= 1 << 6;
        fields.extend_from_slice(&ts.to_be_bytes());
    }
    o.extend_from_slice(&flags.to_be_bytes());
    o.extend_from_slice(&fields);
    o
}

/// A content header frame's payload, decoded: body size and properties.
pub fn decode_header(payload: &[u8]) -> Result<(u64, Properties), String> {
    let mut r = Reader { b: payload, pos: 0 };
    let _class = r.u16()?;
    let _weight = r.u16()?;
    let size = r.u64()?;
    let flags = r.u16()?;
    let on = |bit: u16| flags & (1 << bit) != 0;
    let mut p = Properties::default();
    if on(15) {
        p.content_type = Some(r.short()?);
    }
    if on(14) {
        r.short()?; // content-encoding
    }
    if on(13) {
        p.headers = Some(r.table()?);
    }
    if on(12) {
        p.delivery_mode = Some(r.u8()?);
    }
    if on(11) {
        r.u8()?; // priority
    }
    for bit in [10, 9, 8] {
        if on(bit) {
            r.short()?; // correlation-id, reply-to, expiration
        }
    }
    if on(7) {
        p.message_id = Some(r.short()?);
    }
    if on(6) {
        p.timestamp = Some(r.u64()?);
    }
    for bit in [5, 4, 3, 2] {
        if on(bit) {
            r.short()?; // type, user-id, app-id, cluster-id
        }
    }
    Ok((size, p))
}

/// A whole frame around `payload`.
pub fn encode_frame(kind: u8, channel: u16, payload: &[u8], out: &mut Vec<u8>) {
    out.push(kind);
    out.extend_from_slice(&channel.to_be_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_be_bytes());
    out.extend_from_slice(payload);
    out.push(FRAME_END);
}

/// The first frame of `buf` and its length, `None` while incomplete.
pub fn parse_frame(buf: &[u8], frame_max: u32) -> Result<Option<(Frame, usize)>, String> {
    if buf.len() < 7 {
        return Ok(None);
    }
    let kind = buf[0];
    let channel = u16::from_be_bytes([buf[1], buf[2]]);
    let size = u32::from_be_bytes([buf[3], buf[4], buf[5], buf[6]]);
    if size > frame_max.max(4096) {
        return Err(format!(
            "a frame of {size} bytes, over the negotiated {frame_max}"
        ));
    }
    let end = 7 + size as usize;
    if buf.len() < end + 1 {
        return Ok(None);
    }
    if buf[end] != FRAME_END {
        return Err("a frame without its end marker".into());
    }
    let payload = &buf[7..end];
    let frame = match kind {
        FRAME_METHOD => Frame::Method(channel, decode_method(payload)?),
        FRAME_HEADER => {
            let (size, p) = decode_header(payload)?;
            Frame::Header(channel, size, p)
        }
        FRAME_BODY => Frame::Body(channel, payload.to_vec()),
        FRAME_HEARTBEAT => Frame::Heartbeat,
        other => return Err(format!("an unknown frame type {other}")),
    };
    Ok(Some((frame, end + 1)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use amq_protocol_types::AMQPValue;

    #[test]
    fn round_trips() {
        let mut headers = FieldTable::default();
        headers.insert("h".into(), AMQPValue::LongString("v".into()));
        let p = Properties {
            content_type: Some("application/json".into()),
            headers: Some(headers),
            delivery_mode: Some(2),
            message_id: Some("id-1".into()),
            timestamp: Some(7),
        };
        assert_eq!(decode_header(&encode_header(42, &p)), Ok((42, p)));
        let mut out = Vec::new();
        encode_frame(
            FRAME_METHOD,
            1,
            &encode_method(&Method::Ack {
                delivery_tag: 9,
                multiple: true,
            }),
            &mut out,
        );
        let (frame, used) = parse_frame(&out, 131072).unwrap().unwrap();
        assert_eq!(used, out.len());
        assert_eq!(
            frame,
            Frame::Method(
                1,
                Method::Ack {
                    delivery_tag: 9,
                    multiple: true
                }
            )
        );
        assert_eq!(parse_frame(&out[..out.len() - 1], 131072), Ok(None));
    }
}
