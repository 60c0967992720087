// Package policyengine compiles signerd's spending policy (YAML, one file or a directory) into an
// immutable Policy and decides payment intents against it. It is pure: no sockets, no HSM, no
// writes; Load only reads the policy files. Counters live outside the engine.
//
// # Contracts used by the daemon and the ledger
//
//   - Caller (socket credentials) → agent: Policy.Principal(c). Unknown or ambiguous callers fail.
//     Policy.Wallets(agent) lists the wallets the agent may use, the first being its default; an
//     agent declared `wallets: any` gets CompileOptions.Wallets (the wallets the daemon holds) and,
//     if that list is empty, may use any non-zero wallet (dev mode, where the daemon generates its
//     key at start: pass the generated address in CompileOptions.Wallets to pin it).
//   - Policy.Evaluate(intent, usage, now) → Decision{Outcome: Allow | Deny | NeedsApproval, Code,
//     Rule, Reason, Group, Timeout, Charges, Matches}. Deny is the zero Outcome. Denial codes are
//     the exported Code* constants. A usage read error denies with CodeUsageUnavailable and the
//     cause in Decision.Err (a fault, logged, never shown to the caller).
//   - Charges: the caller must check-and-debit all Decision.Charges atomically before signing
//     (MemLedger.Apply here; signerd/ledger durably). A Charge is {Budget, Key, Window, Limit,
//     Amount, Count}; Window 0 is a lifetime counter. Limit and Amount are shared: read-only.
//   - Windows are bucketed (BucketWidth, BucketIndex, WindowFirstBucket, WindowBuckets): a charge
//     applied at now lands in bucket BucketIndex(window, now); usage at now is the sum of buckets
//     with index in [WindowFirstBucket(window, now), BucketIndex(window, now)] (MemLedger sums
//     every bucket ≥ first, so a writer whose clock ran ahead is still counted). This never
//     under-counts the last `window`; it may over-count by up to one bucket (w/60).
//   - MemLedger: in-memory UsageReader with Apply(charges, now), all-or-nothing; an exhausted
//     charge returns *BudgetError, errors.Is(err, ErrBudgetExhausted). Its clock never goes
//     backwards (charges are placed and checked at max(now, latest now seen)); a ring-of-buckets
//     ledger needs that rule, or a charge far in the future can evict a bucket an
//     earlier-clocked check still needs (the property test found exactly that).
//   - Load(path, opts) / Compile(files, opts) with CompileOptions{SelfUID, Wallets}: `uid: self`
//     in a caller means SelfUID. Compile errors are CompileErrors (file:line:col: path: message).
//   - Policy.Hash(): SHA-256 over the deterministic CBOR (CoreDetEncOptions) of the compiled IR;
//     reordering rules or splitting files does not change it. Policy.KillSwitch() returns the
//     compiled kill_switch.auto_trip section.
//   - DecodeIntent(json) decodes the `signerctl policy explain` intent file (Intent's JSON tags).
//   - Intent.Action says what is decided: ActionGuarantee (the zero value: every caller that
//     predates actions builds guarantees), ActionDeposit, ActionWithdraw (requestWithdrawal),
//     ActionCancelWithdrawal and ActionFinalizeWithdrawal (amount 0), ActionPayTab (PayTo = the
//     recipient, TabID required). Rules, budgets and approvals select actions with `actions:`;
//     without it they apply to guarantees only, except deny rules, which apply to every action
//     their selectors mean something for (sellers → guarantee and pay_tab). An agent whose allow
//     rules cover other actions only is denied CodeActionNotAllowed. See docs/policy-actions.md.
//
// # Semantics
//
// Deny-overrides with default deny: a request is allowed only if no deny rule matches, at least
// one allow rule allows it, every applicable budget and rate limit has room, and no approval
// threshold applies (then NeedsApproval). Rule order never matters. See docs/policy.md.
package policyengine
