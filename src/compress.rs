//! Compression of vector tiles and JSON (br, gzip). Being written.
