// io/tag.hpp: packs (operation, connection slot, generation) into the 64-bit user_data of an I/O operation.
// The generation lets a late completion for a slot that was closed and reused be recognised and dropped.
#pragma once

#include <cstdint>

namespace userd::io {

enum class Op : std::uint8_t { None = 0, Accept, Recv, Send, Wake, UpConnect, UpRecv, UpSend };

constexpr std::uint64_t tag(Op op, std::uint32_t slot = 0, std::uint16_t gen = 0) noexcept {
  return std::uint64_t(op) << 56 | std::uint64_t(gen) << 32 | slot;
}
constexpr Op tag_op(std::uint64_t t) noexcept { return Op(t >> 56); }
constexpr std::uint32_t tag_slot(std::uint64_t t) noexcept { return std::uint32_t(t); }
constexpr std::uint16_t tag_gen(std::uint64_t t) noexcept { return std::uint16_t(t >> 32); }

}  // namespace userd::io
