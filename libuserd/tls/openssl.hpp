// tls/openssl.hpp: OpenSSL, loaded when TLS is first used instead of when the process starts. Linked as usual,
// libcrypto and libssl cost every userd process 1.7 MiB of RSS (mostly their relocations), serving TLS or not.
// Here OpenSSL's headers give the types and macros, and every function libuserd calls is redirected to a pointer
// that dlopen("libssl.so.3") fills on first use. Files of libuserd include this instead of <openssl/...>.
// Not here: what the functions are used for (tls.cpp).
#pragma once

#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>

#include <string>

// Every OpenSSL function libuserd calls, after OpenSSL's own macros (SSL_CTX_set_mode is SSL_CTX_ctrl...).
#define USERD_OPENSSL_FUNCTIONS(X) \
  X(BIO_ctrl) \
  X(BIO_ctrl_pending) \
  X(BIO_free) \
  X(BIO_new) \
  X(BIO_new_mem_buf) \
  X(BIO_read) \
  X(BIO_s_mem) \
  X(BIO_write) \
  X(ERR_clear_error) \
  X(ERR_error_string_n) \
  X(ERR_get_error) \
  X(EVP_PKEY_free) \
  X(OpenSSL_version) \
  X(PEM_read_bio_PrivateKey) \
  X(PEM_read_bio_X509) \
  X(PEM_read_bio_X509_AUX) \
  X(SSL_CTX_check_private_key) \
  X(SSL_CTX_ctrl) \
  X(SSL_CTX_free) \
  X(SSL_CTX_load_verify_locations) \
  X(SSL_CTX_new) \
  X(SSL_CTX_set_alpn_protos) \
  X(SSL_CTX_set_alpn_select_cb) \
  X(SSL_CTX_set_cipher_list) \
  X(SSL_CTX_set_client_CA_list) \
  X(SSL_CTX_set_default_verify_paths) \
  X(SSL_CTX_set_info_callback) \
  X(SSL_CTX_set_options) \
  X(SSL_CTX_set_session_id_context) \
  X(SSL_CTX_set_verify) \
  X(SSL_CTX_up_ref) \
  X(SSL_CTX_use_PrivateKey) \
  X(SSL_CTX_use_certificate) \
  X(SSL_SESSION_free) \
  X(SSL_SESSION_is_resumable) \
  X(SSL_ctrl) \
  X(SSL_do_handshake) \
  X(SSL_free) \
  X(SSL_get0_alpn_selected) \
  X(SSL_get0_param) \
  X(SSL_get0_peer_certificate) \
  X(SSL_get1_session) \
  X(SSL_get_error) \
  X(SSL_get_ex_data) \
  X(SSL_get_version) \
  X(SSL_has_pending) \
  X(SSL_load_client_CA_file) \
  X(SSL_new) \
  X(SSL_read) \
  X(SSL_select_next_proto) \
  X(SSL_session_reused) \
  X(SSL_set1_host) \
  X(SSL_set_accept_state) \
  X(SSL_set_bio) \
  X(SSL_set_connect_state) \
  X(SSL_set_ex_data) \
  X(SSL_set_session) \
  X(SSL_shutdown) \
  X(SSL_version) \
  X(SSL_write) \
  X(TLS_client_method) \
  X(TLS_server_method) \
  X(X509_NAME_print_ex) \
  X(X509_VERIFY_PARAM_set1_ip_asc) \
  X(X509_free) \
  X(X509_get_subject_name)

namespace userd::tls {

struct OpenSslApi {
#define USERD_OPENSSL_POINTER(f) decltype(&::f) f = nullptr;
  USERD_OPENSSL_FUNCTIONS(USERD_OPENSSL_POINTER)
#undef USERD_OPENSSL_POINTER
  std::string error;  // empty once every function was found
};

// Loaded on first call (any thread, once). Call sites that may come first (making a context, --version) check
// api().error; the rest run only where a context already exists.
const OpenSslApi& api() noexcept;

}  // namespace userd::tls

// openssl.cpp fills the table and needs the real names.
#ifndef USERD_OPENSSL_NO_REDIRECT
#define BIO_ctrl (::userd::tls::api().BIO_ctrl)
#define BIO_ctrl_pending (::userd::tls::api().BIO_ctrl_pending)
#define BIO_free (::userd::tls::api().BIO_free)
#define BIO_new (::userd::tls::api().BIO_new)
#define BIO_new_mem_buf (::userd::tls::api().BIO_new_mem_buf)
#define BIO_read (::userd::tls::api().BIO_read)
#define BIO_s_mem (::userd::tls::api().BIO_s_mem)
#define BIO_write (::userd::tls::api().BIO_write)
#define ERR_clear_error (::userd::tls::api().ERR_clear_error)
#define ERR_error_string_n (::userd::tls::api().ERR_error_string_n)
#define ERR_get_error (::userd::tls::api().ERR_get_error)
#define EVP_PKEY_free (::userd::tls::api().EVP_PKEY_free)
#define OpenSSL_version (::userd::tls::api().OpenSSL_version)
#define PEM_read_bio_PrivateKey (::userd::tls::api().PEM_read_bio_PrivateKey)
#define PEM_read_bio_X509 (::userd::tls::api().PEM_read_bio_X509)
#define PEM_read_bio_X509_AUX (::userd::tls::api().PEM_read_bio_X509_AUX)
#define SSL_CTX_check_private_key (::userd::tls::api().SSL_CTX_check_private_key)
#define SSL_CTX_ctrl (::userd::tls::api().SSL_CTX_ctrl)
#define SSL_CTX_free (::userd::tls::api().SSL_CTX_free)
#define SSL_CTX_load_verify_locations (::userd::tls::api().SSL_CTX_load_verify_locations)
#define SSL_CTX_new (::userd::tls::api().SSL_CTX_new)
#define SSL_CTX_set_alpn_protos (::userd::tls::api().SSL_CTX_set_alpn_protos)
#define SSL_CTX_set_alpn_select_cb (::userd::tls::api().SSL_CTX_set_alpn_select_cb)
#define SSL_CTX_set_cipher_list (::userd::tls::api().SSL_CTX_set_cipher_list)
#define SSL_CTX_set_client_CA_list (::userd::tls::api().SSL_CTX_set_client_CA_list)
#define SSL_CTX_set_default_verify_paths (::userd::tls::api().SSL_CTX_set_default_verify_paths)
#define SSL_CTX_set_info_callback (::userd::tls::api().SSL_CTX_set_info_callback)
#define SSL_CTX_set_options (::userd::tls::api().SSL_CTX_set_options)
#define SSL_CTX_set_session_id_context (::userd::tls::api().SSL_CTX_set_session_id_context)
#define SSL_CTX_set_verify (::userd::tls::api().SSL_CTX_set_verify)
#define SSL_CTX_up_ref (::userd::tls::api().SSL_CTX_up_ref)
#define SSL_CTX_use_PrivateKey (::userd::tls::api().SSL_CTX_use_PrivateKey)
#define SSL_CTX_use_certificate (::userd::tls::api().SSL_CTX_use_certificate)
#define SSL_SESSION_free (::userd::tls::api().SSL_SESSION_free)
#define SSL_SESSION_is_resumable (::userd::tls::api().SSL_SESSION_is_resumable)
#define SSL_ctrl (::userd::tls::api().SSL_ctrl)
#define SSL_do_handshake (::userd::tls::api().SSL_do_handshake)
#define SSL_free (::userd::tls::api().SSL_free)
#define SSL_get0_alpn_selected (::userd::tls::api().SSL_get0_alpn_selected)
#define SSL_get0_param (::userd::tls::api().SSL_get0_param)
#define SSL_get0_peer_certificate (::userd::tls::api().SSL_get0_peer_certificate)
#define SSL_get1_session (::userd::tls::api().SSL_get1_session)
#define SSL_get_error (::userd::tls::api().SSL_get_error)
#define SSL_get_ex_data (::userd::tls::api().SSL_get_ex_data)
#define SSL_get_version (::userd::tls::api().SSL_get_version)
#define SSL_has_pending (::userd::tls::api().SSL_has_pending)
#define SSL_load_client_CA_file (::userd::tls::api().SSL_load_client_CA_file)
#define SSL_new (::userd::tls::api().SSL_new)
#define SSL_read (::userd::tls::api().SSL_read)
#define SSL_select_next_proto (::userd::tls::api().SSL_select_next_proto)
#define SSL_session_reused (::userd::tls::api().SSL_session_reused)
#define SSL_set1_host (::userd::tls::api().SSL_set1_host)
#define SSL_set_accept_state (::userd::tls::api().SSL_set_accept_state)
#define SSL_set_bio (::userd::tls::api().SSL_set_bio)
#define SSL_set_connect_state (::userd::tls::api().SSL_set_connect_state)
#define SSL_set_ex_data (::userd::tls::api().SSL_set_ex_data)
#define SSL_set_session (::userd::tls::api().SSL_set_session)
#define SSL_shutdown (::userd::tls::api().SSL_shutdown)
#define SSL_version (::userd::tls::api().SSL_version)
#define SSL_write (::userd::tls::api().SSL_write)
#define TLS_client_method (::userd::tls::api().TLS_client_method)
#define TLS_server_method (::userd::tls::api().TLS_server_method)
#define X509_NAME_print_ex (::userd::tls::api().X509_NAME_print_ex)
#define X509_VERIFY_PARAM_set1_ip_asc (::userd::tls::api().X509_VERIFY_PARAM_set1_ip_asc)
#define X509_free (::userd::tls::api().X509_free)
#define X509_get_subject_name (::userd::tls::api().X509_get_subject_name)
#endif
