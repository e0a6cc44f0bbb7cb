// server/http1_session.hpp: HTTP/1.1 (and 1.0) as a session on a transport: requests parsed straight out of
// the bytes the transport hands in, answered in request order (pipelining), 100-continue, chunked streams,
// keep-alive and its deadlines. One request awaits its answer at a time; the ones pipelined behind it wait as
// bytes.
// Not here: the socket and TLS (transport.hpp), routing and the handler call (dispatch.hpp).
#pragma once

#include <cstdint>
#include <functional>
#include <span>
#include <string_view>

#include "libuserd/core/byte_buffer.hpp"
#include "libuserd/http/message_reader.hpp"
#include "libuserd/http/parser.hpp"
#include "libuserd/http/response_writer.hpp"
#include "libuserd/server/compression.hpp"
#include "libuserd/server/dispatch.hpp"
#include "libuserd/server/session.hpp"

namespace userd::server {

class Connection;
class Transport;
struct LoopContext;

class Http1Session final : public Session {
 public:
  Http1Session(LoopContext& ctx, Connection& conn, Transport& t) noexcept : ctx_(&ctx), conn_(&conn), t_(&t) {}

  void start() noexcept;  // a new connection

  void on_bytes(char* data, std::size_t n) override;
  void on_sent() noexcept override;
  Timer deadline() const noexcept override;
  bool input_stuck(bool paused) const noexcept override;
  void on_timeout(Timer t) noexcept override;
  void on_eof() noexcept override;
  void drain() noexcept override;
  void on_abort() noexcept override;
  void on_released() noexcept override;
  void release_buffers(std::size_t keep) noexcept override;

  bool awaiting(std::uint32_t id) const noexcept override { return awaiting_ && id == seq_; }
  bool streaming(std::uint32_t id) const noexcept override { return streaming_ && id == seq_; }
  bool reply(std::uint32_t id, const Response& r) noexcept override;
  bool stream_begin(std::uint32_t id, const Response& head) noexcept override;
  bool stream_write(std::uint32_t id, std::string_view data, bool end,
                    std::span<const Header> trailers) noexcept override;
  bool stream_write_taken(std::uint32_t id, std::string_view data) noexcept override;
  void stream_on_writable(std::uint32_t id, std::function<void()> fn) override;
  bool stream_abort(std::uint32_t id) noexcept override;
  bool stream_backed_up(std::uint32_t) const noexcept override;
  // One request at a time: what waits for the connection waits for its stream.
  bool stream_waits(std::uint32_t) const noexcept override { return inbox_waits_; }
  void stream_stalled(std::uint32_t, int) noexcept override {}
  void run_writable() noexcept override;
  void run_ready() noexcept override;
  void inbox_waits(bool on) noexcept override { inbox_waits_ = on; }
  bool inbox_waiting() const noexcept override { return inbox_waits_; }

  bool body(std::uint32_t id, BodyCall& c) override;

  bool ready_due() const noexcept override { return ready_due_; }
  bool fresh() const noexcept { return fresh_; }
  void shed() noexcept;  // a free slot gives back its decode buffer too

 private:
  bool preface(char* data, std::size_t n);
  std::size_t process(char* buf, std::size_t len);
  void keep_unfinished(char* req, std::size_t avail);
  void resume();
  void dispatch(const http::RequestHead& head, std::string_view body);
  bool admit(const http::RequestHead& head);
  void handled(bool ok);
  std::size_t feed(char* p, std::size_t n);
  void body_failed(BodyError e);
  void body_end_empty();
  bool body_starved() const noexcept;
  void arm_handler() noexcept;
  void write_response(const Response& r);
  bool write_head(const Response& r, http::BodyFraming framing, Coded& coded);
  bool stream_coded(std::string_view data, bool end);
  void append_body(std::string_view data);
  void refuse_response(std::string_view why);
  void write_error(http::HttpError e);
  void refuse(int status, std::string_view message);
  void write_error_status(int status, std::string_view message, std::span<const Header> extra = {});
  void write_continue();
  bool reading() const noexcept;
  void continue_later();
  void set_awaiting(bool on) noexcept;
  void after_output() noexcept;  // flush, then the receive and the deadline
  bool stream_append(std::uint32_t id, std::string_view data, bool end, std::span<const Header> trailers) noexcept;
  void count(int status, std::size_t body_bytes);
  void writable_soon() noexcept;

  LoopContext* ctx_;
  Connection* conn_;
  Transport* t_;
  bool awaiting_ = false;      // a handler holds a Responder for request seq_
  bool in_dispatch_ = false;   // inside process(): the loop there continues after a synchronous reply
  bool draining_ = false;      // the server is stopping: the request being read is the last one
  bool streaming_ = false;     // request seq_ is being answered by a Stream (awaiting_ stays true)
  bool writable_due_ = false;  // on ctx.writable_due
  bool inbox_waits_ = false;   // the worker holds stream data for this connection
  bool ready_due_ = false;     // on ctx.ready
  bool fresh_ = false;         // nothing read yet, and HTTP/2 is on: the first bytes may be its preface
  int stream_status_ = 0;
  std::size_t stream_bytes_ = 0;
  std::function<void()> writable_;  // Stream::on_writable's callback, until it runs

  // A request with a body is routed at its head, and its middleware run, before the body is read. A buffered
  // route's handler then runs once the body is in (admitted_); a streamed route's runs at once and gets the body
  // as it comes (body_), straight out of the bytes the transport hands in.
  bool admitted_ = false;
  const Handler* admitted_handler_ = nullptr;
  bool body_unread_ = false;  // request seq_ has body bytes not read yet: its answer closes the connection
  BodyConsumer body_;
  std::uint64_t body_left_ = 0;  // Content-Length framing: bytes still to come
  bool body_chunked_ = false;
  bool body_expect_ = false;     // a 100 Continue goes out when the consumer asks
  bool in_feed_ = false;         // inside a consumer's on_data: like in_dispatch_, the loop there goes on
  http::ChunkedDecoder chunks_;

  // The request being read, from its first byte in whichever buffer holds it.
  http::MessageReader<http::RequestHead> reader_;
  bool continue_sent_ = false;

  // What the awaited response needs to know once the request's bytes are gone.
  std::uint32_t seq_ = 0;
  bool req_keep_alive_ = true;
  bool req_head_only_ = false;
  std::uint8_t req_minor_ = 1;
  http::Coding req_coding_ = http::Coding::Identity;  // what its Accept-Encoding chose (compression on)
  StreamEncoder senc_;                                 // a compressed Stream's encoder
  Exchange ex_;
  RouteParams params_;       // what the route of the request being dispatched captured
  core::ByteBuffer decode_;  // where escaped parameters and query values are decoded

  core::ByteBuffer in_;  // unfinished request bytes, and later requests while one awaits its answer
};

}  // namespace userd::server
