// Saving and loading named tensors (a state dict) to a file.
//
// The format is small enough to read in a hex dump and strict enough to refuse any damaged
// file with a message that says where and what:
//
//   offset 0   magic            8 bytes  "HRSTDICT"
//          8   format version   u32      kSerializeVersion
//         12   entry count      u64
//         20   entries, each:
//                name length    u32      1 .. kMaxNameBytes
//                name           bytes    UTF-8, unique within the file
//                dtype code     u8       0 f32, 1 f64, 2 f16, 3 bf16, 4 i32, 5 i64, 6 u8, 7 bool
//                ndim           u8       0 .. kMaxDims
//                dims           i64 each
//                data length    u64      numel * dtype size
//                data           bytes    row-major
//   end - 8    checksum         u64      FNV-1a 64 of every byte before it
//
// All integers and tensor data are little-endian. Loading streams the file (tensor bytes go
// straight into the tensors, the checksum is updated on the way), so a checkpoint never needs
// twice its size in memory. Tensors on a GPU are copied to the host one at a time to save.
// Saving writes "<path>.tmp", fsyncs it, renames it over path and fsyncs the folder (Note
// [atomic save] in serialize.cpp), so a crash or a full disk never leaves half a file and a
// failed save leaves the old file as it was. Dims must describe at most 2^56 bytes counting
// only the non-zero dims (Note [shape arithmetic] in engine/shape.h), and bool data must be 0
// or 1. Files and buffers are read by one implementation.
#pragma once

#include <cstddef>
#include <cstdint>
#include <map>
#include <string>

#include "engine/tensor.h"

namespace headroom::nn {

inline constexpr char kSerializeMagic[8] = {'H', 'R', 'S', 'T', 'D', 'I', 'C', 'T'};
inline constexpr uint32_t kSerializeVersion = 1;
inline constexpr uint32_t kMaxNameBytes = 4096;
inline constexpr uint32_t kMaxDims = 16;

// Writes the tensors (any device, any strides) to path, atomically and durably. Throws IOError
// naming the file when it cannot be written (and removes "<path>.tmp").
void save_tensors(const std::map<std::string, Tensor>& tensors, const std::string& path);

// Reads a file written by save_tensors into host tensors. Throws IOError naming the file when
// it is missing, has the wrong magic or an unsupported version, is truncated (with the byte
// offset and the field being read), holds implausible sizes, or fails its checksum.
std::map<std::string, Tensor> load_tensors(const std::string& path);

// The same from a state-dict file's bytes in memory; `name` stands for the file in the error
// messages. (The fuzz target tests/fuzz/state_dict_fuzz.cpp feeds it.)
std::map<std::string, Tensor> load_tensors_from_buffer(const void* data, size_t nbytes, const std::string& name);

// FNV-1a, 64 bits: h = (h ^ byte) * 0x100000001b3, from 0xcbf29ce484222325. Pass the previous
// result as `h` to continue over more bytes.
uint64_t fnv1a64(const void* data, size_t nbytes, uint64_t h = 0xcbf29ce484222325ull);

}  // namespace headroom::nn
