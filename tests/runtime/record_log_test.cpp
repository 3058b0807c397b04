#include "runtime/storage/record_log.hpp"

#include <gtest/gtest.h>
#include <sys/resource.h>

#include <csignal>
#include <filesystem>
#include <fstream>

using namespace flotilla;
namespace fs = std::filesystem;

namespace {

struct TempFile {
  fs::path path = fs::temp_directory_path() /
                  ("flotilla-record-log-" + std::to_string(::getpid()) + "-" +
                   ::testing::UnitTest::GetInstance()->current_test_info()->name());
  TempFile() { fs::remove(path); }
  ~TempFile() { fs::remove(path); }
};

}  // namespace

TEST(RecordLog, RecordsReadBackInOrderAndATornTailIsCutWhenReopened) {
  const TempFile f;
  {
    auto log = RecordLog::open(f.path, 0, true);
    ASSERT_TRUE(log) << log.error().message;
    ASSERT_TRUE(log->append("first"));
    ASSERT_TRUE(log->append(std::string(1000, 'x')));
    ASSERT_TRUE(log->append(""));
  }
  std::ofstream(f.path, std::ios::app | std::ios::binary) << "FLRC\x07";  // a crash mid-append
  auto read = RecordLog::read(f.path, 1 << 20);
  ASSERT_TRUE(read);
  ASSERT_EQ(read->records.size(), 3u);
  EXPECT_EQ(read->records[0], "first");
  EXPECT_EQ(read->records[1].size(), 1000u);
  EXPECT_NE(read->torn.find("record 4"), std::string::npos) << read->torn;
  {
    auto log = RecordLog::open(f.path, read->good_bytes, true);
    ASSERT_TRUE(log);
    ASSERT_TRUE(log->append("after"));
  }
  auto again = RecordLog::read(f.path, 1 << 20);
  ASSERT_TRUE(again);
  EXPECT_TRUE(again->torn.empty()) << again->torn;
  ASSERT_EQ(again->records.size(), 4u);
  EXPECT_EQ(again->records[3], "after");
}

TEST(RecordLog, AChecksumOrLengthThatDoesNotHoldEndsTheGoodRecords) {
  const TempFile f;
  {
    auto log = RecordLog::open(f.path, 0, false);
    ASSERT_TRUE(log->append("one"));
    ASSERT_TRUE(log->append("two"));
  }
  {
    std::fstream io(f.path, std::ios::in | std::ios::out | std::ios::binary);
    io.seekp(16 + 3 + 16);  // the second record's payload
    io << "X";
  }
  auto read = RecordLog::read(f.path, 1 << 20);
  ASSERT_EQ(read->records.size(), 1u);
  EXPECT_NE(read->torn.find("checksum"), std::string::npos);
  auto bounded = RecordLog::read(f.path, 2);
  EXPECT_TRUE(bounded->records.empty());
  EXPECT_NE(bounded->torn.find("at most 2"), std::string::npos) << bounded->torn;
}

TEST(RecordLog, AFailedAppendLeavesNoHalfRecordForTheNextOnesToHideBehind) {
  const TempFile f;
  auto log = RecordLog::open(f.path, 0, false);
  ASSERT_TRUE(log->append("kept"));
  // The disk fills up mid-record: the file may not grow past 100 bytes (EFBIG, not a signal).
  const auto previous = std::signal(SIGXFSZ, SIG_IGN);
  rlimit before{};
  ::getrlimit(RLIMIT_FSIZE, &before);
  rlimit small = before;
  small.rlim_cur = 100;
  ASSERT_EQ(::setrlimit(RLIMIT_FSIZE, &small), 0);
  const auto failed = log->append(std::string(500, 'y'));
  ::setrlimit(RLIMIT_FSIZE, &before);
  std::signal(SIGXFSZ, previous);
  ASSERT_FALSE(failed);
  EXPECT_NE(failed.error().message.find("cannot append"), std::string::npos);
  ASSERT_TRUE(log->append("next"));
  auto read = RecordLog::read(f.path, 1 << 20);
  ASSERT_TRUE(read);
  EXPECT_TRUE(read->torn.empty()) << read->torn;
  ASSERT_EQ(read->records.size(), 2u);
  EXPECT_EQ(read->records[1], "next");
}
