// A TCP proxy on loopback for fault tests: forwards every connection made
// to its port to a target port, until Cut, which drops every connection and
// refuses new ones (a partition of what lies behind it) until healed. Its
// sockets are close-on-exec: a process the test starts must not keep a
// dropped connection open.
#pragma once

#include <atomic>
#include <thread>

namespace atomq::testing {

class TcpProxy {
 public:
  // Listens on 127.0.0.1:`port` (0: a free one) and forwards to `target`.
  TcpProxy(int port, int target);
  ~TcpProxy();
  TcpProxy(const TcpProxy&) = delete;
  TcpProxy& operator=(const TcpProxy&) = delete;

  int port() const { return port_; }
  void Cut(bool cut) { cut_ = cut; }
  // Silences every connection open now, for good: they stay open but
  // nothing more crosses them either way (a partition that sends no reset).
  // Connections made later are forwarded.
  void Silence() { silence_ = true; }

 private:
  void Run();

  int listener_ = -1;
  int port_ = 0;
  const int target_;
  std::atomic<bool> cut_{false};
  std::atomic<bool> silence_{false};
  std::atomic<bool> stop_{false};
  std::thread thread_;
};

}  // namespace atomq::testing
