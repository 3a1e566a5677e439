// For tests and the benchmark: a loopback TCP port for a server to be
// started on, that no other caller of FreePort, in this process or another,
// is given while this process lives. Ports come from below the kernel's
// ephemeral range, so neither bind(0) nor an outgoing connection takes one
// between FreePort and the server's bind; a process reserves its ports by
// holding an abstract Unix socket named after each (gone when it exits).
#pragma once

#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cstddef>
#include <cstdio>
#include <fstream>
#include <mutex>
#include <random>
#include <set>
#include <string>

namespace atomq {

namespace free_port_internal {

inline int EphemeralLow() {
  std::ifstream in("/proc/sys/net/ipv4/ip_local_port_range");
  int low = 0;
  if (!(in >> low) || low <= 11000) return 32768;
  return low;
}

// Holds "\0atomq-port-PORT" for the life of the process; false if another
// process holds it.
inline bool Reserve(int port) {
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  sockaddr_un addr{};
  addr.sun_family = AF_UNIX;
  const int n = snprintf(addr.sun_path + 1, sizeof(addr.sun_path) - 1, "atomq-port-%d", port);
  const socklen_t len = socklen_t(offsetof(sockaddr_un, sun_path) + 1 + n);
  if (bind(fd, reinterpret_cast<sockaddr*>(&addr), len) != 0) {
    close(fd);
    return false;
  }
  return true;  // fd kept open on purpose
}

inline bool Bindable(int port) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return false;
  sockaddr_in addr{};
  addr.sin_family = AF_INET;
  addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  addr.sin_port = htons(uint16_t(port));
  const bool ok = bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) == 0;
  close(fd);
  return ok;
}

}  // namespace free_port_internal

inline int FreePort() {
  static std::mutex mu;
  static std::set<int> given;
  static std::mt19937 rng{std::random_device{}()};
  std::lock_guard<std::mutex> lock(mu);
  const int low = 10000, high = free_port_internal::EphemeralLow();
  for (;;) {
    const int port = low + int(rng() % unsigned(high - low));
    if (given.count(port) > 0 || !free_port_internal::Bindable(port) ||
        !free_port_internal::Reserve(port)) {
      continue;
    }
    given.insert(port);
    return port;
  }
}

}  // namespace atomq
