//! Message assembly: fragments and interleaved control frames into messages, with size limits.
// being implemented
