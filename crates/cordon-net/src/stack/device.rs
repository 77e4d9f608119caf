//! smoltcp's view of the link: at most one received frame (the one the
//! engine is feeding it) and the outgoing [`TxBuf`].

use smoltcp::phy::{self, DeviceCapabilities, Medium};
use smoltcp::time::Instant;

use super::framing::TxBuf;

/// Ethernet header bytes on top of the IP MTU.
pub(crate) const ETHERNET_HEADER: usize = 14;

/// Above this many unwritten bytes, smoltcp is told the device is busy, so
/// that a slow link pushes back on the sockets instead of growing the buffer.
const TX_HIGH_WATER: usize = 1024 * 1024;

pub(crate) struct FrameDevice<'a> {
    pub(crate) rx: Option<&'a [u8]>,
    pub(crate) tx: &'a mut TxBuf,
}

impl phy::Device for FrameDevice<'_> {
    type RxToken<'b>
        = RxToken<'b>
    where
        Self: 'b;
    type TxToken<'b>
        = TxToken<'b>
    where
        Self: 'b;

    fn receive(&mut self, _: Instant) -> Option<(RxToken<'_>, TxToken<'_>)> {
        let frame = self.rx.take()?;
        Some((RxToken(frame), TxToken(self.tx)))
    }

    fn transmit(&mut self, _: Instant) -> Option<TxToken<'_>> {
        (self.tx.pending().len() < TX_HIGH_WATER).then_some(TxToken(self.tx))
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ethernet;
        caps.max_transmission_unit = super::MTU as usize + ETHERNET_HEADER;
        caps
    }
}

pub(crate) struct RxToken<'a>(&'a [u8]);

impl phy::RxToken for RxToken<'_> {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(self.0)
    }
}

pub(crate) struct TxToken<'a>(&'a mut TxBuf);

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        self.0.push_with(len, f)
    }
}
