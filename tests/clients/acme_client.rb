#!/usr/bin/env ruby
# frozen_string_literal: true

# Ruby's acme-client gem (Debian's ruby-acme-client) against Cairn, driven by
# tests/clients.rs. One step per run, each starting from nothing but the
# state directory, as a renewal from cron would:
#
#   acme_client.rb issue  DIRECTORY ROOT_PEM STATE_DIR HTTP01_PORT OUT_PEM NAME...
#   acme_client.rb revoke DIRECTORY ROOT_PEM STATE_DIR CERT_PEM REASON
#
# The account key is STATE_DIR/account.pem: `issue` creates it and the
# account the first time, and after that finds the account by its key
# (onlyReturnExisting). http-01 is answered by a small HTTP server on
# 127.0.0.1:HTTP01_PORT (the standard library's socket: WEBrick left Ruby's
# standard library in 3.0). Cairn's TLS root is trusted through Faraday's
# connection options. Prints what it did; any failure raises, and exits
# non-zero with the gem's error.

require 'acme-client'
require 'openssl'
require 'socket'

# How long an authorization or an order may stay pending or processing.
POLL_TIMEOUT = 30

def client(directory, root_pem, state_dir)
  key_path = File.join(state_dir, 'account.pem')
  key = if File.exist?(key_path)
          OpenSSL::PKey.read(File.read(key_path))
        else
          OpenSSL::PKey::EC.generate('prime256v1').tap { |k| File.write(key_path, k.to_pem) }
        end
  Acme::Client.new(private_key: key, directory: directory,
                   connection_options: { ssl: { ca_file: root_pem } })
end

# The account of this key: created on first use, found by the key after.
def account(client)
  acct = client.account
  puts "account: #{acct.kid} (existing)"
rescue Acme::Client::Error::AccountDoesNotExist
  acct = client.new_account(contact: 'mailto:test@example.com', terms_of_service_agreed: true)
  puts "account: #{acct.kid} (created)"
end

# Serves `responses` (path => body) over plain HTTP on 127.0.0.1:port, one
# connection at a time, until the process exits.
def serve_http01(port, responses)
  server = TCPServer.new('127.0.0.1', port)
  Thread.new do
    loop do
      conn = server.accept
      begin
        path = conn.gets.to_s.split(' ')[1].to_s
        nil while (line = conn.gets) && line != "\r\n"
        body = responses[path]
        status = body ? '200 OK' : '404 Not Found'
        body ||= ''
        conn.write("HTTP/1.1 #{status}\r\nContent-Type: text/plain\r\n" \
                   "Content-Length: #{body.bytesize}\r\nConnection: close\r\n\r\n#{body}")
      rescue StandardError => e
        warn "http-01 server: #{e}"
      ensure
        conn.close
      end
    end
  end
end

# Reloads `resource` until its status is neither pending nor processing.
def wait_done(what, resource)
  deadline = Process.clock_gettime(Process::CLOCK_MONOTONIC) + POLL_TIMEOUT
  while %w[pending processing].include?(resource.status)
    raise "#{what} still #{resource.status} after #{POLL_TIMEOUT}s" if
      Process.clock_gettime(Process::CLOCK_MONOTONIC) > deadline

    sleep 0.1
    resource.reload
  end
  resource.status
end

def issue(client, port, out_pem, names)
  account(client)
  order = client.new_order(identifiers: names)
  responses = {}
  serve_http01(port, responses)
  order.authorizations.each do |authz|
    next if authz.status == 'valid' # reused from an earlier order

    challenge = authz.http01
    responses["/#{challenge.filename}"] = challenge.file_content
    challenge.request_validation
    status = wait_done("http-01 for #{authz.identifier['value']}", challenge)
    raise "http-01 for #{authz.identifier['value']} is #{status}: #{challenge.error}" if status != 'valid'
  end
  # Cairn derives the order's status from its authorizations.
  order.reload
  raise "order is #{order.status} after validation, not ready" if order.status != 'ready'

  key = OpenSSL::PKey::EC.generate('prime256v1')
  order.finalize(csr: Acme::Client::CertificateRequest.new(private_key: key, names: names))
  status = wait_done('order', order)
  raise "order is #{status} after finalize" if status != 'valid'

  File.write(out_pem, order.certificate)
  puts "certificate: #{out_pem} (#{names.join(', ')})"
end

def revoke(client, cert_pem, reason)
  account(client)
  client.revoke(certificate: File.read(cert_pem), reason: Integer(reason))
  puts "revoked: #{cert_pem} (reason #{reason})"
end

step, directory, root_pem, state_dir, *rest = ARGV
usage = "usage: #{$PROGRAM_NAME} issue|revoke DIRECTORY ROOT_PEM STATE_DIR ..."
abort usage if state_dir.nil?
acme = client(directory, root_pem, state_dir)
case step
when 'issue'
  port, out_pem, *names = rest
  abort usage if names.empty?
  issue(acme, Integer(port), out_pem, names)
when 'revoke'
  cert_pem, reason = rest
  abort usage if reason.nil?
  revoke(acme, cert_pem, reason)
else
  abort usage
end
