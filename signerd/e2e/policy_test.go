package e2e

// apiPolicy is the policy most tests run under. Suites are separated by task labels so budget
// and rate tests do not spend each other's room.
const apiPolicy = `version: 1
settings:
  max_timestamp_skew: 60s
assets:
  USDC: {address: "0x036CbD53842c5426634e7929541eC2318f3dCF7e", decimals: 6}
agents:
  tester:
    callers: [{uid: self}]
    wallets: ["{{WALLET}}"]
rules:
  - id: allow-usdc
    effect: allow
    agents: [tester]
    sellers: ["0x1111111111111111111111111111111111111111", "0x1234567890123456789012345678901234567890"]
    networks: [eip155:84532]
    chain_ids: [84532]
    assets: [USDC]
    versions: [1]
    max_amount: "1000000"
  - id: allow-v2
    effect: allow
    agents: [tester]
    labels: {suite: v2}
    sellers: ["0x1111111111111111111111111111111111111111"]
    networks: [eip155:84532]
    assets: [USDC]
    versions: [2]
    max_amount: "1000000"
    v2:
      registries: ["0x1111111111111111111111111111111111111111"]
      validators: ["0x2222222222222222222222222222222222222222"]
      min_score: 80
  - id: frozen
    effect: deny
    labels: {state: frozen}
  - id: drainer
    effect: deny
    sellers: ["0xbad0000000000000000000000000000000000bad"]
  - id: no-net
    effect: deny
    labels: {suite: nonet}
    networks: [eip155:84532]
budgets:
  - id: budget-suite
    labels: {suite: budget}
    per: [agent]
    window: day
    limit: "2500"
  - id: rate-suite
    labels: {suite: rate}
    per: [agent]
    window: minute
    max_requests: 2
approvals:
  - id: big-payment
    agents: [tester]
    at_or_above: "500000"
    group: finance
    timeout: 3s
`
