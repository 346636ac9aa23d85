# The ServerEngine side of the benchmark: the same worker as pyse_target.py,
# in Ruby, on ServerEngine's process workers.
#
#   ruby bench/serverengine_target.rb CONFIG.json
#
# CONFIG.json holds ServerEngine configuration keys (pyse reads the same
# names) plus bench_mode ("normal" or "stubborn", see pyse_target.py).
# Each worker writes "<kind> <pid> <CLOCK_MONOTONIC seconds>" lines into the
# FIFO named by $BENCH_EVENTS, one write(2) per line.
require 'json'
require 'serverengine'

module BenchWorker
  def initialize
    @flag = ServerEngine::BlockingFlag.new
    @stubborn = config[:bench_mode] == 'stubborn'
  end

  def self.open_events
    File.open(ENV.fetch('BENCH_EVENTS'), File::WRONLY | File::NONBLOCK)
  end

  def self.record(io, kind)
    t = Process.clock_gettime(Process::CLOCK_MONOTONIC)
    io.syswrite(format("%s %d %.6f\n", kind, Process.pid, t))
  end

  def record(kind)
    BenchWorker.record(@events, kind)
  end

  # Runs in the server just before each fork (as in pyse_target.py).
  def before_fork
    $bench_master_events ||= BenchWorker.open_events
    BenchWorker.record($bench_master_events, 'fork')
  end

  def run
    # Opened after the fork, like the Python side; the bench holds the read
    # end, so a non-blocking open for writing succeeds at once.
    @events = BenchWorker.open_events
    # ServerEngine sets QUIT to SIG_DFL in its workers; a stubborn worker
    # records it and lives on, so the escalation reaches SIGKILL.
    trap(:QUIT) { record('quit') } if @stubborn
    record('ready')
    until @flag.wait_for_set(1.0)
    end
  end

  def stop
    record('term')
    @flag.set! unless @stubborn
  end
end

config = JSON.parse(File.read(ARGV.fetch(0)), symbolize_names: true)
ServerEngine.create(nil, BenchWorker, config).run
