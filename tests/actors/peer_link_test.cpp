#include "actors/peer_link.hpp"

#include <gtest/gtest.h>

#include <stdexcept>

using namespace flotilla::actors;

TEST(ComputeSlot, IsReleasedWhenTheComputationThrows) {
  ComputeSlots slots(1);
  try {
    const ComputeSlot slot(&slots);
    EXPECT_FALSE(slots.try_acquire()) << "the one slot is held";
    throw std::runtime_error("training failed");
  } catch (const std::runtime_error&) {
  }
  ASSERT_TRUE(slots.try_acquire()) << "a throw leaked the slot: the other clients would block forever";
  slots.release();
}
