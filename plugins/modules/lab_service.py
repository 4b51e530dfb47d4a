#!/usr/bin/python
# -*- coding: utf-8 -*-
# Copyright (c) Apiary developers
# Apache-2.0 (see galaxy.yml)

from __future__ import annotations

DOCUMENTATION = r"""
module: lab_service
short_description: Run a supervised background process on an Apiary lab node
description:
  - Lab nodes are network namespaces without systemd. This module starts a small supervisor (double fork,
    new session) in the namespace the module runs in, which runs O(command), restarts it O(restart_delay)
    seconds after it exits, and stops it when the supervisor gets SIGTERM.
  - Stopping sends SIGTERM to the command's whole process group and SIGKILL after O(stop_timeout) seconds.
  - The supervisor's PID is in C(RUN_DIR/NAME.pid), the command's output in C(RUN_DIR/NAME.log), and what it
    runs in C(RUN_DIR/NAME.state) (JSON).
  - Idempotent. The same command, environment and settings already running under their supervisor in this
    namespace are left alone. Anything else is restarted.
author: Apiary developers
version_added: 0.1.0
attributes:
  check_mode:
    support: full
  diff_mode:
    support: full
options:
  name:
    description: Service name; names the pid, log and state files.
    type: str
    required: true
  command:
    description: The program and its arguments (no shell). Required with O(state=started) or O(state=restarted).
    type: list
    elements: str
  state:
    description: V(started) makes sure it runs as described, V(stopped) stops it, V(restarted) always restarts it.
    type: str
    choices: [started, stopped, restarted]
    default: started
  run_dir:
    description: Folder for the pid, log and state files; created if missing.
    type: path
    required: true
  env:
    description:
      - Environment of the command, added to a clean base (C(PATH), C(LANG), C(HOME)) so the controller's
        environment does not leak into lab processes.
    type: dict
    default: {}
  restart_delay:
    description: Seconds to wait before restarting the command after it exits.
    type: float
    default: 1
  stop_timeout:
    description: Seconds between SIGTERM and SIGKILL when stopping.
    type: float
    default: 10
notes:
  - Run it on a lab node through the M(apiary.cluster.netns) connection so that the process lives in the
    node's network namespace. A supervisor found running in another network namespace (e.g. the node's
    namespace was rebuilt) counts as not running and is replaced.
"""

EXAMPLES = r"""
- name: Run etcd on a lab node
  apiary.cluster.lab_service:
    name: etcd
    command: [/usr/bin/etcd, --data-dir, /var/lib/apiary-lab/node1/etcd]
    run_dir: /var/lib/apiary-lab/node1/run

- name: Stop it
  apiary.cluster.lab_service:
    name: etcd
    run_dir: /var/lib/apiary-lab/node1/run
    state: stopped
"""

RETURN = r"""
pid:
  description: PID of the supervisor (null when stopped).
  returned: always
  type: int
child_pid:
  description: PID of the command (null when stopped or between restarts).
  returned: always
  type: int
pid_file:
  description: The supervisor's pid file.
  returned: always
  type: str
log_file:
  description: Where the command's stdout and stderr go.
  returned: always
  type: str
"""

import json
import os
import signal
import subprocess
import time

from ansible.module_utils.basic import AnsibleModule

BASE_ENV = {'PATH': '/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin', 'LANG': 'C.UTF-8', 'HOME': '/root'}
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
# What makes two runs of a service "the same": any difference means a restart.
IDENTITY = ('command', 'env', 'restart_delay', 'stop_timeout', 'netns')


# --- processes ------------------------------------------------------------------------------
def proc_start_time(pid):
    """Start time of pid in clock ticks (tells a live process from a reused pid), or None if gone."""
    try:
        with open('/proc/%d/stat' % pid) as f:
            stat = f.read()
    except (OSError, TypeError):
        return None
    fields = stat.rsplit(')', 1)[1].split()
    # A zombie has exited already.
    return None if fields[0] == 'Z' else int(fields[19])


def alive(pid, start_time):
    return bool(pid) and start_time is not None and proc_start_time(pid) == start_time


def netns_of(pid):
    try:
        return os.readlink('/proc/%s/ns/net' % pid)
    except OSError:
        return None


def write_json(path, data):
    tmp = path + '.tmp'
    with open(tmp, 'w') as f:
        json.dump(data, f)
    os.rename(tmp, path)


def signal_group(pgid, sig):
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def wait_gone(pid, start_time, timeout):
    deadline = time.monotonic() + timeout
    while alive(pid, start_time):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.05)
    return True


# --- the supervisor (runs in the double-forked grandchild) ---------------------------------------
def supervise(spec, paths):
    """Run spec['command'] until SIGTERM; restart it when it exits. Never returns."""
    # Signals are taken synchronously (sigtimedwait) so a stop request can never be lost between
    # "child exited" and "start it again".
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS + (signal.SIGCHLD,))
    state = dict(spec, pid=os.getpid(), start_time=proc_start_time(os.getpid()), child_pid=None,
                 child_start_time=None, restarts=0)
    child = None
    stopping = False
    log = open(paths['log'], 'ab', buffering=0)
    while not stopping:
        try:
            child = subprocess.Popen(
                spec['command'], env=dict(BASE_ENV, **spec['env']), stdin=subprocess.DEVNULL, stdout=log,
                stderr=subprocess.STDOUT, close_fds=True, start_new_session=True, cwd='/',
                preexec_fn=lambda: signal.pthread_sigmask(signal.SIG_SETMASK, []))
            state.update(child_pid=child.pid, child_start_time=proc_start_time(child.pid))
        except OSError as e:
            log.write(('lab_service: cannot start %s: %s\n' % (spec['command'], e)).encode())
            child = None
        write_json(paths['state'], state)
        while child is not None and child.poll() is None:
            sig = signal.sigtimedwait(STOP_SIGNALS + (signal.SIGCHLD,), 1.0)
            if sig is not None and sig.si_signo != signal.SIGCHLD:
                stopping = True
                break
        if stopping:
            break
        log.write(('lab_service: %s exited (%s); restarting in %ss\n'
                   % (spec['command'][0], child and child.returncode, spec['restart_delay'])).encode())
        state.update(child_pid=None, child_start_time=None, restarts=state['restarts'] + 1)
        write_json(paths['state'], state)
        deadline = time.monotonic() + spec['restart_delay']
        while not stopping and time.monotonic() < deadline:
            sig = signal.sigtimedwait(STOP_SIGNALS, max(0.01, deadline - time.monotonic()))
            stopping = sig is not None
    if child is not None and child.poll() is None:
        # The command runs in its own session: its pid is its process group.
        signal_group(child.pid, signal.SIGTERM)
        try:
            child.wait(spec['stop_timeout'])
        except subprocess.TimeoutExpired:
            pass
        signal_group(child.pid, signal.SIGKILL)
        child.wait()
    for path in (paths['pid'], paths['state']):
        try:
            os.unlink(path)
        except OSError:
            pass
    os._exit(0)


def daemonize(spec, paths):
    """Double fork + setsid; returns in the module process once the supervisor is up."""
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(read_fd)
            os.setsid()
            if os.fork() != 0:
                os._exit(0)
            # Detach from the connection's pipes, or Ansible would wait for the supervisor to exit.
            os.dup2(os.open(os.devnull, os.O_RDWR), 0)
            # The supervisor's own complaints (tracebacks) land in the service log too.
            log = os.open(paths['log'], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o640)
            os.dup2(log, 1)
            os.dup2(log, 2)
            os.closerange(3, write_fd)
            os.closerange(write_fd + 1, 65536)
            os.chdir('/')
            with open(paths['pid'], 'w') as f:
                f.write('%d\n' % os.getpid())
            os.write(write_fd, b'%d' % os.getpid())
            os.close(write_fd)
            supervise(spec, paths)
        finally:
            os._exit(1)
    os.close(write_fd)
    os.waitpid(pid, 0)
    with os.fdopen(read_fd, 'rb') as r:
        data = r.read()
    return int(data) if data else None


# --- the module ---------------------------------------------------------------------------------
class LabService:
    def __init__(self, module):
        self.module = module
        p = module.params
        self.name = p['name']
        base = os.path.join(p['run_dir'], p['name'])
        self.paths = {'pid': base + '.pid', 'log': base + '.log', 'state': base + '.state'}
        self.spec = None
        if p['command']:
            self.spec = {'name': p['name'], 'command': p['command'],
                         'env': {k: str(v) for k, v in p['env'].items()},
                         'restart_delay': p['restart_delay'], 'stop_timeout': p['stop_timeout'],
                         'netns': netns_of('self')}

    def current(self):
        """The running supervisor's state, or None."""
        try:
            with open(self.paths['pid']) as f:
                pid = int(f.read().strip())
        except (OSError, ValueError):
            return None
        state = {}
        for _attempt in range(50):
            # The supervisor writes its state just after its pid file; give it a moment.
            try:
                with open(self.paths['state']) as f:
                    state = json.load(f)
                break
            except (OSError, ValueError):
                if proc_start_time(pid) is None:
                    break
                time.sleep(0.1)
        if state.get('pid') != pid or not alive(pid, state.get('start_time')):
            return {'stale': True, **state}
        return state

    def stop(self, state):
        pid, start = state.get('pid'), state.get('start_time')
        if alive(pid, start):
            os.kill(pid, signal.SIGTERM)
            if not wait_gone(pid, start, state.get('stop_timeout', 10) + 5):
                os.kill(pid, signal.SIGKILL)
                wait_gone(pid, start, 5)
        # A supervisor killed outright leaves its command behind: take the whole group down.
        child, child_start = state.get('child_pid'), state.get('child_start_time')
        if alive(child, child_start):
            signal_group(child, signal.SIGTERM)
            if not wait_gone(child, child_start, state.get('stop_timeout', 10)):
                signal_group(child, signal.SIGKILL)
                wait_gone(child, child_start, 5)
        for path in (self.paths['pid'], self.paths['state']):
            if os.path.exists(path):
                os.unlink(path)

    def start(self):
        os.makedirs(os.path.dirname(self.paths['pid']), exist_ok=True)
        pid = daemonize(self.spec, self.paths)
        if pid is None:
            self.module.fail_json(msg='the supervisor for %s did not start' % self.name)
        for _attempt in range(100):
            state = self.current()
            if state and not state.get('stale') and state.get('child_pid'):
                return state
            time.sleep(0.05)
        return self.current() or {'pid': pid}

    @staticmethod
    def describe(state):
        if not state or state.get('stale'):
            return 'stopped\n'
        return json.dumps({'running': {k: state.get(k) for k in IDENTITY}}, indent=2, sort_keys=True) + '\n'

    def run(self):
        p = self.module.params
        state = self.current()
        running = state is not None and not state.get('stale')
        same = running and self.spec is not None and all(state.get(k) == self.spec[k] for k in IDENTITY)
        if p['state'] == 'stopped':
            changed = running
            after = None
        else:
            changed = p['state'] == 'restarted' or not same
            after = dict(self.spec)
        result = {'changed': changed, 'pid_file': self.paths['pid'], 'log_file': self.paths['log'],
                  'pid': state.get('pid') if running else None,
                  'child_pid': state.get('child_pid') if running else None}
        if self.module._diff:
            result['diff'] = {'before': self.describe(state), 'after': self.describe(after),
                              'before_header': self.name, 'after_header': self.name}
        if self.module.check_mode:
            self.module.exit_json(**result)
        if state is not None and (changed or state.get('stale')):
            self.stop(state)
            result.update(pid=None, child_pid=None)
        if changed and p['state'] != 'stopped':
            new = self.start()
            result.update(pid=new.get('pid'), child_pid=new.get('child_pid'))
        self.module.exit_json(**result)


def main():
    module = AnsibleModule(
        argument_spec=dict(
            name=dict(type='str', required=True),
            command=dict(type='list', elements='str'),
            state=dict(type='str', choices=['started', 'stopped', 'restarted'], default='started'),
            run_dir=dict(type='path', required=True),
            env=dict(type='dict', default={}),
            restart_delay=dict(type='float', default=1),
            stop_timeout=dict(type='float', default=10),
        ),
        required_if=[('state', 'started', ['command']), ('state', 'restarted', ['command'])],
        supports_check_mode=True,
    )
    LabService(module).run()


if __name__ == '__main__':
    main()
