// For tests: a fresh directory under /tmp, removed with everything in it.
#pragma once

#include <stdlib.h>

#include <filesystem>
#include <string>

namespace atomq {

class TempDir {
 public:
  explicit TempDir(const std::string& prefix = "atomq_test") {
    std::string tmpl = "/tmp/" + prefix + ".XXXXXX";
    char* p = mkdtemp(tmpl.data());
    path_ = p != nullptr ? p : "/tmp/" + prefix + ".failed";
  }
  ~TempDir() {
    std::error_code ec;
    std::filesystem::remove_all(path_, ec);
  }
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::string& path() const { return path_; }

 private:
  std::string path_;
};

}  // namespace atomq
