"""Per kind of invocation of one project (by the log lines each REPORT request id wrote): count,
   largest Max Memory Used and Duration, from localstack/.state/logs/runner.log.

   python3 bench/invocations.py <project id>
"""
import json,re,sys
log=open('localstack/.state/logs/runner.log',errors='replace').read().splitlines()
pid=sys.argv[1]
reqs={}
for l in log:
    if pid in l and l.startswith('{'):
        try: j=json.loads(l)
        except Exception: continue
        m=(j.get('fields') or {}).get('message'); rid=(j.get('spans') or [{}])[0].get('requestId')
        if rid: reqs.setdefault(rid,set()).add(m)
rep={}
for l in log:
    m=re.search(r"(\S+) REPORT RequestId: (\S+)\tDuration: ([\d.]+) ms.*Max Memory Used: (\d+) MB",l)
    if m: rep[m.group(2)]=(m.group(1),float(m.group(3)),int(m.group(4)))
kinds={}
for rid,msgs in reqs.items():
    if rid not in rep: continue
    f,ms,mb=rep[rid]
    if 'run planned' in msgs: k='fan-out plan'
    elif 'blocked ingestion: data.bin and index.bin assembled' in msgs: k='fan-out assemble'
    elif 'blocked ingestion: chunk partitioned' in msgs: k='fan-out chunk'
    elif 'blocked ingestion planned' in msgs: k='fan-out ingest plan'
    elif 'shard compared' in msgs: k='compare'
    else: k=f+' other'
    a=kinds.setdefault(k,[0,0,0.0]); a[0]+=1; a[1]=max(a[1],mb); a[2]=max(a[2],ms)
for k,v in sorted(kinds.items()): print(f"{k}: invocations {v[0]}, max memory used {v[1]} MB, max duration {v[2]/1000:.1f} s")
