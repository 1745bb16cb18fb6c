//! What one ring slot holds.

/// The layout of one device kind's ring entries: sizes and byte codecs of
/// its request and response.
///
/// Implemented by a value (not just a type) because some protocols have
/// several layouts chosen at connect time (blkif's x86_32 and x86_64 ABIs).
/// The slot stride is the larger of the two sizes (the C union).
///
/// Contract for the back ring's safety: [`decode_request`](Self::decode_request)
/// works on a private copy and must not panic on any bytes (the frontend
/// wrote them); the codecs are given slices of exactly the stated size.
pub trait RingEntry {
    /// A request as copied out of its slot.
    type Request;
    /// A response to write into a slot.
    type Response;

    /// Bytes of a request.
    fn request_size(&self) -> usize;
    /// Bytes of a response.
    fn response_size(&self) -> usize;
    /// Slot stride: the larger of the request and response sizes.
    fn entry_size(&self) -> usize {
        self.request_size().max(self.response_size())
    }
    /// Decodes a request from a private copy of `request_size()` bytes.
    fn decode_request(&self, bytes: &[u8]) -> Self::Request;
    /// Encodes a response into `response_size()` bytes (every byte, padding
    /// included, so nothing of ours leaks: XSA-216).
    fn encode_response(&self, rsp: &Self::Response, out: &mut [u8]);
    /// Encodes a request into `request_size()` bytes (frontend side, tests).
    fn encode_request(&self, req: &Self::Request, out: &mut [u8]);
    /// Decodes a response from `response_size()` bytes (frontend side,
    /// tests).
    fn decode_response(&self, bytes: &[u8]) -> Self::Response;
}
