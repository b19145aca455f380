// IDX files (the MNIST format), gzip-compressed, read and written through zlib.
//
// Layout: two zero bytes, a type byte (0x08 u8, 0x0C i32, 0x0D f32, 0x0E f64 -- the 0x09 i8
// and 0x0B i16 of the format have no headroom dtype and are refused), a dims byte, then each
// dim as a big-endian u32, then the elements row-major and big-endian. Plain (uncompressed)
// files are read too: zlib passes them through.
//
// Everything is checked, because a half-downloaded file should fail loudly, not train on
// zeros: every error is an IOError naming the file, and for a short file the byte offset
// where the data ran out and how many bytes the header promised. The dims must describe at
// most 1 TiB of data counting only the non-zero dims (Note [shape arithmetic] in
// engine/shape.h: a zero dim does not excuse the others).
//
// Files and buffers go through one implementation (one gzip decoder, one header parser):
// read_idx_from_buffer is what the fuzz target (tests/fuzz/idx_fuzz.cpp) feeds.
//
//   Tensor images = data::read_idx_gz("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz");
//   // u8 [10000, 28, 28]
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "engine/tensor.h"

namespace headroom::data {

// The file's tensor, of the file's dims and dtype (u8, i32, f32 or f64), on the CPU.
Tensor read_idx_gz(const std::string& path);

// The same from bytes in memory (gzip-compressed or plain); `name` stands for the file in the
// error messages.
Tensor read_idx_from_buffer(const void* data, size_t nbytes, const std::string& name);

// Writes t (u8, i32, f32 or f64, at least one dim) as a gzip-compressed IDX file.
void write_idx_gz(const std::string& path, const Tensor& t);

// Whole-file gzip helpers the two above are built on (tests use them to make broken files).
std::vector<uint8_t> read_gz(const std::string& path);
void write_gz(const std::string& path, const std::vector<uint8_t>& bytes);

}  // namespace headroom::data
