#!/usr/bin/env bash
# A real S3 server on loopback for tests: Ceph radosgw over a one-monitor, one-OSD (memstore)
# cluster, auth off, pool size 1, msgr v1 only. Memory-backed: everything is gone when it stops.
#   infra/s3/radosgw.sh install            apt-get Debian's ceph-mon ceph-osd radosgw (root)
#   infra/s3/radosgw.sh start DIR [PORT]   start (monitor on PORT+1); prints the endpoint
#   infra/s3/radosgw.sh stop DIR           stop the daemons started in DIR
# Keys: S3_ACCESS_KEY / S3_SECRET_KEY (default vlactest / vlactestsecret).
set -euo pipefail
cmd=${1:?usage: radosgw.sh install | start DIR [PORT] | stop DIR}
if [[ $cmd == install ]]; then
  if command -v radosgw >/dev/null && command -v ceph-mon >/dev/null; then exit 0; fi
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq ceph-mon ceph-osd radosgw >/dev/null
  exit 0
fi
DIR=${2:?give a working directory}
if [[ $cmd == stop ]]; then
  for p in "$DIR"/run/*.pid; do [[ -f $p ]] && kill "$(cat "$p")" 2>/dev/null || true; done
  exit 0
fi
[[ $cmd == start ]] || { echo "unknown command $cmd" >&2; exit 2; }
PORT=${3:-7480}; MON_PORT=$((PORT + 1))
ACCESS=${S3_ACCESS_KEY:-vlactest}; SECRET=${S3_SECRET_KEY:-vlactestsecret}
stop_daemons() {
  for p in "$DIR"/run/*.pid; do [[ -f $p ]] && kill "$(cat "$p")" 2>/dev/null || true; done
  sleep 1
}
start_once() {
  rm -rf "$DIR"; mkdir -p "$DIR"/{mon,osd,run,log}
  FSID=$(python3 -c 'import uuid; print(uuid.uuid4())')
  CLASSDIR=$(dirname "$(find /usr/lib -name 'libcls_rgw.so*' | head -1)")
  CONF=$DIR/ceph.conf
  cat > "$CONF" <<CONF
[global]
fsid = $FSID
mon host = [v1:127.0.0.1:$MON_PORT]
auth cluster required = none
auth service required = none
auth client required = none
ms bind msgr2 = false
client mount timeout = 30
rados mon op timeout = 30
osd pool default size = 1
osd pool default min size = 1
osd pool default pg num = 8
osd pool default pgp num = 8
osd crush chooseleaf type = 0
mon allow pool size one = true
mon warn on pool no redundancy = false
run dir = $DIR/run
pid file = $DIR/run/\$name.pid
log file = $DIR/log/\$name.log
admin socket = $DIR/run/\$name.asok
osd objectstore = memstore
memstore device bytes = 1073741824
osd class dir = $CLASSDIR
ms bind ipv6 = false
[mon.a]
mon data = $DIR/mon
public addr = 127.0.0.1
[osd.0]
osd data = $DIR/osd
[client.rgw.a]
rgw frontends = beast endpoint=127.0.0.1:$PORT
CONF
  monmaptool --create --addv a "[v1:127.0.0.1:$MON_PORT]" --fsid "$FSID" "$DIR/monmap" >/dev/null
  ceph-mon -c "$CONF" -i a --mkfs --monmap "$DIR/monmap" >/dev/null
  ceph-mon -c "$CONF" -i a
  OSD_UUID=$(python3 -c 'import uuid; print(uuid.uuid4())')
  timeout 60 /usr/bin/python3 /usr/bin/ceph -c "$CONF" osd new "$OSD_UUID" >/dev/null
  ceph-osd -c "$CONF" -i 0 --mkfs --osd-uuid "$OSD_UUID" >/dev/null 2>&1
  ceph-osd -c "$CONF" -i 0
  radosgw -c "$CONF" -n client.rgw.a
  curl_ok=0
  for _ in $(seq 1 120); do
    if python3 -c "import urllib.request; urllib.request.urlopen('http://127.0.0.1:$PORT', timeout=1)" 2>/dev/null; then curl_ok=1; break; fi
    sleep 0.5
  done
  [[ $curl_ok == 1 ]] || { echo "radosgw did not answer on port $PORT" >&2; return 1; }
  timeout 60 radosgw-admin -c "$CONF" user create --uid vlac --display-name vlac --access-key "$ACCESS" --secret "$SECRET" >/dev/null
}
# The OSD sometimes fails its first boot ("wrong fsid" from the monitor); a fresh cluster in
# the same folder then starts. Three attempts.
for attempt in 1 2 3; do
  set +e
  ( set -e; start_once )
  rc=$?
  set -e
  [[ $rc == 0 ]] && break
  echo "radosgw start attempt $attempt failed (exit $rc)" >&2
  stop_daemons
done
[[ $rc == 0 ]] || exit "$rc"
echo "export VLAC_S3_ENDPOINT=http://127.0.0.1:$PORT"
