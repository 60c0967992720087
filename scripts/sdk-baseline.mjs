// The unisolated baseline of `make bench`: the official @4mica/sdk PaymentSigner signing payment
// guarantees (V1 claims, EIP-712, the daemon's protocol parameters) in a loop in this one node
// process, with the private key in the process's memory and nothing written anywhere.
//
//   node scripts/sdk-baseline.mjs [OPS]   signs OPS guarantees (default 1500) after a warm-up
//                                         and prints sdk_ops_s=<signatures per second>
//   node scripts/sdk-baseline.mjs --serve for each line N on stdin signs N guarantees and
//                                         answers "N <elapsed ns>" (signerd/e2e
//                                         BenchmarkE2ETPM alternates these rounds with the
//                                         daemon's, so that load hits both alike)
//
// Only the signing is timed: each round's random tab ids are drawn before its clock starts;
// building the claims (the SDK's input validation) and signRequest are inside it.
//
// The SDK and viem come from the 4Mica oracle's node_modules, found as scripts/setup.sh installs
// it: $SIGNERD_ORACLE_DIR, else $SIGNERD_SHARED_DIR/oracle, else ../shared/oracle beside the
// repository.
import { randomBytes } from 'node:crypto';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { createInterface } from 'node:readline';
import { fileURLToPath } from 'node:url';

const repo = join(dirname(fileURLToPath(import.meta.url)), '..');
const oracle =
  process.env.SIGNERD_ORACLE_DIR ||
  join(process.env.SIGNERD_SHARED_DIR || join(repo, '..', 'shared'), 'oracle');
const require = createRequire(join(oracle, 'package.json'));
const { CorePublicParameters, PaymentGuaranteeRequestClaims, PaymentSigner, SigningScheme } =
  require('@4mica/sdk');
const { generatePrivateKey, privateKeyToAccount } = require('viem/accounts');

// The daemon's protocol section in signerd/e2e (network eip155:84532, EIP-712 domain 4mica/1),
// and the bench policy's seller and asset (USDC on Base Sepolia).
const params = CorePublicParameters.fromRpc({ eip712_name: '4mica', eip712_version: '1', chain_id: 84532 });
const seller = '0x1111111111111111111111111111111111111111';
const usdc = '0x036CbD53842c5426634e7929541eC2318f3dCF7e';

const account = privateKeyToAccount(generatePrivateKey());
const signer = new PaymentSigner(account);

/** Signs n guarantees, each on a fresh tab, and returns the elapsed time in nanoseconds. */
async function round(n) {
  const tabs = Array.from({ length: n }, () => BigInt('0x' + randomBytes(16).toString('hex')));
  const start = process.hrtime.bigint();
  for (const tab of tabs) {
    const ts = Math.floor(Date.now() / 1000);
    const claims = PaymentGuaranteeRequestClaims.new(account.address, seller, tab, 1n, ts, usdc, 1n);
    await signer.signRequest(params, claims, SigningScheme.EIP712);
  }
  return process.hrtime.bigint() - start;
}

async function serve() {
  for await (const line of createInterface({ input: process.stdin })) {
    const n = Number.parseInt(line, 10);
    if (!(n > 0)) throw new Error(`sdk-baseline: want a positive count per line, got ${JSON.stringify(line)}`);
    process.stdout.write(`${n} ${await round(n)}\n`);
  }
}

async function once(ops) {
  await round(Math.min(ops, 200)); // warm-up: JIT, the SDK's lazy initialisation
  const ns = await round(ops);
  console.log(`sdk_ops_s=${Math.round((ops * 1e9) / Number(ns))}`);
}

const arg = process.argv[2];
try {
  if (arg === '--serve') await serve();
  else await once(arg ? Number.parseInt(arg, 10) : 1500);
} catch (err) {
  console.error(err instanceof Error ? err.message : err);
  process.exit(1);
}
